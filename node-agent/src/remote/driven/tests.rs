//! The driven client against the embedded memory server.

use super::*;
use yonder_common::{
    protocol::{PageData, ReadItem, ReadResult, WriteItem, WriteResult},
    tls, PageKey, PAGE_SIZE,
};

fn page(i: u64) -> Vec<u8> {
    (0..PAGE_SIZE)
        .map(|b| (i as usize * 31 + b * 7) as u8)
        .collect()
}

/// Runs `test` with a driven client connected to an embedded server that holds pages
/// `0..pages` of space 1 (version 1, content [`page`]).
fn with_pages(pages: u64, test: impl AsyncFnOnce(DrivenClient)) {
    let embedded = crate::embedded::Embedded::start(64 << 20).unwrap();
    let files = tls::TlsFiles::in_dir(
        embedded.certs().unwrap(),
        yonder_common::certs::DEFAULT_CLIENT,
    );
    let config = tls::client_config(&files, Some(transport::PAGE_MTU)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let c = DrivenClient::connect(config, embedded.addr, "localhost", "test")
            .await
            .unwrap();
        let items = (0..pages)
            .map(|i| WriteItem {
                key: PageKey::new(1, i),
                version: 1,
                data: PageData::Bytes(page(i)),
            })
            .collect();
        let stored = c.write(items).await.unwrap();
        assert!(stored.iter().all(|r| *r == WriteResult::Stored));
        test(c).await;
    });
}

/// Requests cancelled at every stage (before their frame leaves, in flight, with their reply
/// half in) never disturb the ones after them on the same connection: the lanes they used
/// are reset, the others keep serving, and every page reads back right. (The stream events
/// with nothing new that a resent frame brings, which once condemned good lanes, are not
/// provoked here: an agent under load met them, docs/fault-path.md.)
#[test]
fn cancelled_requests_leave_the_connection_serving_every_page_right() {
    const PAGES: u64 = 64;
    with_pages(PAGES, async |c| {
        let read = |first: u64| {
            (first..first + 8)
                .map(|i| ReadItem {
                    key: PageKey::new(1, i % PAGES),
                    version: 1,
                })
                .collect::<Vec<_>>()
        };
        let mut cancelled = 0;
        for n in 0..400u64 {
            // Deadlines from nothing to about a round trip: some requests never leave, some
            // are cut off in flight, some make it.
            let wait = Duration::from_micros((n * 37) % 150);
            if tokio::time::timeout(wait, c.read(read(n))).await.is_err() {
                cancelled += 1;
            }
            let got = c.read(read(n)).await.unwrap();
            for (k, r) in got.into_iter().enumerate() {
                let i = (n + k as u64) % PAGES;
                match r {
                    ReadResult::Found {
                        version: 1,
                        data: PageData::Bytes(b),
                    } => assert_eq!(b, page(i), "page {i} after {n} rounds"),
                    other => panic!("page {i}: {other:?}"),
                }
            }
        }
        assert!(
            cancelled > 0,
            "no request was cancelled: the test tests nothing"
        );
        // Many requests at once, on as many lanes.
        let all = (0..32u64).map(|n| c.read(read(n * 2)));
        for r in futures_util::future::join_all(all).await {
            assert_eq!(r.unwrap().len(), 8);
        }
        assert!(c.stats().await.is_ok());
    });
}

/// Requests written in the same turn of the runtime leave packed into a few datagrams, not one
/// each (one datagram per request halved the memory server's throughput), and every one of
/// them is answered right.
#[test]
fn requests_of_one_turn_share_datagrams() {
    const PAGES: u64 = 32;
    with_pages(PAGES, async |c| {
        let before = c.datagrams_sent();
        let all = (0..PAGES).map(|i| {
            c.read(vec![ReadItem {
                key: PageKey::new(1, i),
                version: 1,
            }])
        });
        for (i, r) in futures_util::future::join_all(all)
            .await
            .into_iter()
            .enumerate()
        {
            match r.unwrap().pop() {
                Some(ReadResult::Found {
                    version: 1,
                    data: PageData::Bytes(b),
                }) => assert_eq!(b, page(i as u64), "page {i}"),
                other => panic!("page {i}: {other:?}"),
            }
        }
        // The 32 requests, and the acknowledgements of their 32 replies.
        let sent = c.datagrams_sent() - before;
        assert!(
            sent < PAGES,
            "{sent} datagrams for {PAGES} requests written in one turn"
        );
    });
}
