//! Turns one decoded request of an authenticated session into a reply. No I/O.

use std::sync::atomic::{AtomicBool, Ordering};

use yonder_common::{
    protocol::{
        ErrorCode, PageData, ReadItem, Request, Response, StatsReply, WriteItem, MAX_BATCH_PAGES,
    },
    PageKey, PAGE_SIZE, PROTOCOL_VERSION,
};

use crate::{
    store::{Store, TenantId},
    wire::WriteRef,
};

/// State of one client connection: who it is and whether it said hello.
pub struct Session {
    tenant: TenantId,
    tenant_name: String,
    greeted: AtomicBool,
}

impl Session {
    /// A session for an authenticated tenant, before its hello.
    pub fn new(tenant: TenantId, tenant_name: String) -> Self {
        Self {
            tenant,
            tenant_name,
            greeted: AtomicBool::new(false),
        }
    }

    /// The tenant's name (its certificate's common name).
    pub fn tenant_name(&self) -> &str {
        &self.tenant_name
    }

    /// The tenant's store id.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Whether the session's hello was accepted.
    pub fn greeted(&self) -> bool {
        self.greeted.load(Ordering::Acquire)
    }
}

fn check_batch(len: usize) -> Result<(), Response> {
    if len > MAX_BATCH_PAGES {
        return Err(Response::error(
            ErrorCode::BatchTooLarge,
            format!("batch of {len} pages exceeds the limit of {MAX_BATCH_PAGES}"),
        ));
    }
    Ok(())
}

fn check_page_len(key: PageKey, len: usize) -> Result<(), Response> {
    if len != PAGE_SIZE {
        return Err(Response::error(
            ErrorCode::InvalidPage,
            format!(
                "page {key:?} has {len} bytes, expected {PAGE_SIZE}; nothing in this batch was written"
            ),
        ));
    }
    Ok(())
}

fn check_pages(pages: &[WriteItem]) -> Result<(), Response> {
    for item in pages {
        if let PageData::Bytes(b) = &item.data {
            check_page_len(item.key, b.len())?;
        }
    }
    Ok(())
}

/// Answers a write request decoded in place ([`crate::wire::decode_write`]) exactly as [`handle`]
/// answers the same request decoded into the common types.
pub fn handle_write(store: &Store, session: &Session, pages: &[WriteRef<'_>]) -> Response {
    if !session.greeted() {
        return Response::error(
            ErrorCode::HelloRequired,
            "the first request on a connection must be a hello",
        );
    }
    let result = check_batch(pages.len())
        .and_then(|()| {
            for item in pages {
                if let Some(b) = item.data.bytes() {
                    check_page_len(item.key, b.len())?;
                }
            }
            Ok(())
        })
        .map(|()| Response::Write {
            pages: pages
                .iter()
                .map(|p| store.write_bytes(session.tenant, p.key, p.version, p.data.bytes()))
                .collect(),
        });
    result.unwrap_or_else(|e| e)
}

/// Answers one request from `session` against `store`.
pub fn handle(store: &Store, session: &Session, req: Request) -> Response {
    let tenant = session.tenant;
    let greeted = session.greeted.load(Ordering::Acquire);
    let result = match req {
        Request::Hello {
            protocol_version, ..
        } => hello(store, session, protocol_version),
        _ if !greeted => Err(Response::error(
            ErrorCode::HelloRequired,
            "the first request on a connection must be a hello",
        )),
        Request::Read { pages } => check_batch(pages.len()).map(|()| Response::Read {
            pages: pages
                .iter()
                .map(|&ReadItem { key, version }| store.read(tenant, key, version))
                .collect(),
        }),
        Request::Write { pages } => check_batch(pages.len())
            .and_then(|()| check_pages(&pages))
            .map(|()| Response::Write {
                pages: pages
                    .iter()
                    .map(|p| store.write(tenant, p.key, p.version, &p.data))
                    .collect(),
            }),
        Request::Free { pages } => check_batch(pages.len()).map(|()| Response::Free {
            freed: pages
                .iter()
                .filter(|p| store.free(tenant, p.key, p.version))
                .count() as u64,
        }),
        Request::DropSpace { space } => Ok(Response::DropSpace {
            freed: store.drop_space(tenant, space),
        }),
        Request::Stats => {
            let u = store.usage();
            let t = store.tenant_usage(tenant);
            Ok(Response::Stats(StatsReply {
                capacity_bytes: u.capacity_bytes,
                used_bytes: u.used_bytes,
                data_pages: u.data_pages,
                zero_pages: u.zero_pages,
                tenant_data_pages: t.data_pages,
                tenant_zero_pages: t.zero_pages,
            }))
        }
    };
    result.unwrap_or_else(|e| e)
}

fn hello(store: &Store, session: &Session, protocol_version: u16) -> Result<Response, Response> {
    if protocol_version != PROTOCOL_VERSION {
        return Err(Response::error(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks protocol version {protocol_version}, this server speaks {PROTOCOL_VERSION}"
            ),
        ));
    }
    session.greeted.store(true, Ordering::Release);
    Ok(Response::Hello {
        protocol_version: PROTOCOL_VERSION,
        server: format!("yonder-server {}", env!("CARGO_PKG_VERSION")),
        tenant: session.tenant_name.clone(),
        capacity_bytes: store.usage().capacity_bytes,
    })
}

#[cfg(test)]
mod tests {
    use yonder_common::{protocol::*, PageKey};

    use super::*;

    fn hello() -> Request {
        Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "t".into(),
        }
    }

    fn code(resp: Response) -> ErrorCode {
        match resp {
            Response::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn requests_before_hello_are_refused() {
        let store = Store::new(1 << 20);
        let s = Session::new(0, "a".into());
        assert_eq!(
            code(handle(&store, &s, Request::Stats)),
            ErrorCode::HelloRequired
        );
        assert!(matches!(
            handle(&store, &s, hello()),
            Response::Hello { .. }
        ));
        assert!(matches!(
            handle(&store, &s, Request::Stats),
            Response::Stats(_)
        ));
    }

    #[test]
    fn other_versions_are_refused_with_both_numbers() {
        let store = Store::new(1 << 20);
        let s = Session::new(0, "a".into());
        let resp = handle(
            &store,
            &s,
            Request::Hello {
                protocol_version: 99,
                client: "future".into(),
            },
        );
        let Response::Error { code, message } = resp else {
            panic!("expected an error")
        };
        assert_eq!(code, ErrorCode::UnsupportedVersion);
        assert!(message.contains("99") && message.contains(&PROTOCOL_VERSION.to_string()));
    }

    #[test]
    fn bad_batches_change_nothing() {
        let store = Store::new(1 << 20);
        let s = Session::new(0, "a".into());
        handle(&store, &s, hello());
        let good = WriteItem {
            key: PageKey::new(0, 1),
            version: 1,
            data: PageData::Bytes(vec![1; PAGE_SIZE]),
        };
        let short = WriteItem {
            key: PageKey::new(0, 2),
            version: 1,
            data: PageData::Bytes(vec![1; 100]),
        };
        let resp = handle(
            &store,
            &s,
            Request::Write {
                pages: vec![good.clone(), short],
            },
        );
        assert_eq!(code(resp), ErrorCode::InvalidPage);
        assert_eq!(store.usage().data_pages, 0);
        let big = vec![good; MAX_BATCH_PAGES + 1];
        assert_eq!(
            code(handle(&store, &s, Request::Write { pages: big })),
            ErrorCode::BatchTooLarge
        );
        assert_eq!(store.usage().data_pages, 0);
    }
}
