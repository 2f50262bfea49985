//! Frames in both directions: requests as the memory server decodes and answers them, responses
//! as the agent's client decodes them.

use std::{
    collections::BTreeSet,
    sync::{Mutex, MutexGuard, OnceLock},
};

use yonder_common::{
    codec::{decode_frame, decode_payload, encode_frame, payload_len, HEADER_BYTES},
    protocol::{
        ErrorCode, PageData, PageKey, ReadResult, Request, Response, WriteItem, WriteResult,
        MAX_BATCH_PAGES, PAGE_SIZE,
    },
};
use yonder_server::{
    handler::{handle, Session},
    store::{Store, StoreUsage, TenantUsage},
};

/// The store's capacity in the server target: small, so that the fuzzer reaches a full store.
const CAPACITY: u64 = 64 * PAGE_SIZE as u64;
/// The tenant whose pages the fuzzed tenant must never see nor change.
const VICTIM: u32 = 1;
/// Content of the victim's pages.
const MARK: u8 = 0x5a;

/// Splits `data` into frames as the server reads a stream: a header, then that many payload
/// bytes. Stops where the server would stop reading (a refused header, a cut frame).
fn payloads(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let header: [u8; HEADER_BYTES] = data.get(..HEADER_BYTES)?.try_into().ok()?;
        let len = payload_len(header).ok()?;
        let payload = data.get(HEADER_BYTES..HEADER_BYTES + len)?;
        data = &data[HEADER_BYTES + len..];
        Some(payload)
    })
}

/// Re-encodes a decoded message and checks that it decodes to the same value, in no more bytes
/// than it came in (postcard's encoding is the shortest; longer inputs only pad varints).
fn round_trip<T>(msg: &T, payload_bytes: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf).expect("a decoded message re-encodes");
    let (back, used) = decode_frame::<T>(&buf).expect("a re-encoded message decodes");
    assert_eq!(&back, msg, "decode → encode → decode changed the message");
    assert_eq!(used, buf.len());
    assert!(
        buf.len() - HEADER_BYTES <= payload_bytes,
        "re-encoding grew from {payload_bytes} to {} bytes",
        buf.len() - HEADER_BYTES
    );
}

/// The store the server target answers from, built once per process (a fresh store per input
/// cost more than the handler: a 1 MiB frame chunk zeroed for each shard a page lands in, and a new
/// random shard hasher each time). The victim's pages stay; tenant 0's are freed after each input.
struct Fixture {
    store: Store,
    victim_keys: Vec<PageKey>,
    /// The victim's usage, and the whole store's, with only the victim's pages stored.
    victim_usage: TenantUsage,
    baseline: StoreUsage,
    /// Every key tenant 0 stored during the current input: what [`Fixture::reset`] frees.
    stored: BTreeSet<PageKey>,
    /// Whether tenant 0 sent a write during the current input (even one that stored nothing
    /// leaves its empty index behind in a shard).
    wrote: bool,
}

impl Fixture {
    fn new() -> Self {
        let store = Store::new(CAPACITY);
        let victim_keys: Vec<PageKey> = (0..4).map(|s| PageKey::new(0, s)).collect();
        for &key in &victim_keys {
            store.write(VICTIM, key, 1, &PageData::Bytes(vec![MARK; PAGE_SIZE]));
        }
        Self {
            victim_usage: store.tenant_usage(VICTIM),
            baseline: store.usage(),
            store,
            victim_keys,
            stored: BTreeSet::new(),
            wrote: false,
        }
    }

    /// Brings tenant 0 back to nothing stored, as in a new store: frees each page it stored, then
    /// drops a space so that the store forgets tenant 0 in every shard where it now holds nothing.
    /// Checks that the store is back to the victim's pages alone. Only writes add to a tenant's
    /// state, so after an input without one there is nothing to undo.
    fn reset(&mut self) {
        if std::mem::take(&mut self.wrote) {
            for key in std::mem::take(&mut self.stored) {
                self.store.free(0, key, u64::MAX);
            }
            self.store.drop_space(0, 0);
            assert_eq!(self.store.tenant_usage(0), TenantUsage::default());
        }
        assert_eq!(
            self.store.usage(),
            self.baseline,
            "tenant 0 left pages behind"
        );
    }
}

/// The process's [`Fixture`], built on first use. Behind a mutex so that the seed test's threads
/// take turns; the AFL binaries have one thread and never wait on it.
fn fixture() -> MutexGuard<'static, Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    let mut guard = FIXTURE
        .get_or_init(|| Mutex::new(Fixture::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if guard.wrote {
        // Only after a check panicked half-way (in a test; AFL aborts on a panic).
        guard.reset();
    }
    guard
}

/// Builds the server target's store before AFL's fork server starts, so that every forked
/// process inherits it (and the same shard hasher) instead of building its own.
pub fn server_request_setup() {
    drop(fixture());
}

/// Server side: each request frame of `data` is decoded and answered by the real handler for
/// tenant 0 of a store where another tenant holds pages. Checks: decoded requests round-trip;
/// before a hello only a hello is served; every reply round-trips and answers each page of its
/// batch (a page found is a whole page at the expected version or newer); nothing of the other
/// tenant is ever read, changed or freed; usage never exceeds the capacity. The store is shared
/// between inputs but starts each one holding only the other tenant's pages, as a new one would.
pub fn server_request(data: &[u8]) {
    let mut fixture = fixture();
    let session = Session::new(0, "fuzz".into());
    let mut greeted = false;
    // Keys tenant 0 itself wrote with the victim's content: reading those back is no leak.
    let mut own_marked = BTreeSet::new();
    for payload in payloads(data) {
        let Ok(req) = decode_payload::<Request>(payload) else {
            continue;
        };
        round_trip(&req, payload.len());
        let resp = handle(&fixture.store, &session, req.clone());
        round_trip(&resp, usize::MAX);
        if !greeted && !matches!(req, Request::Hello { .. }) {
            assert!(
                matches!(
                    resp,
                    Response::Error {
                        code: ErrorCode::HelloRequired,
                        ..
                    }
                ),
                "served {req:?} before a hello: {resp:?}"
            );
            continue;
        }
        match (&req, &resp) {
            (Request::Hello { .. }, Response::Hello { tenant, .. }) => {
                assert_eq!(tenant, "fuzz");
                greeted = true;
            }
            (Request::Read { pages }, Response::Read { pages: results }) => {
                assert!(pages.len() <= MAX_BATCH_PAGES);
                assert_eq!(pages.len(), results.len());
                for (item, result) in pages.iter().zip(results) {
                    if let ReadResult::Found { version, data } = result {
                        assert!(*version >= item.version, "{item:?} answered with {version}");
                        if let PageData::Bytes(b) = data {
                            assert_eq!(b.len(), PAGE_SIZE);
                            assert!(
                                b.iter().any(|&x| x != MARK) || own_marked.contains(&item.key),
                                "tenant 0 read the other tenant's page {:?}",
                                item.key
                            );
                        }
                    }
                }
            }
            (Request::Write { pages }, Response::Write { pages: results }) => {
                assert!(pages.len() <= MAX_BATCH_PAGES);
                assert!(pages.iter().all(|WriteItem { data, .. }| match data {
                    PageData::Bytes(b) => b.len() == PAGE_SIZE,
                    PageData::Zero => true,
                }));
                assert_eq!(pages.len(), results.len());
                fixture.wrote = true;
                for (item, result) in pages.iter().zip(results) {
                    if matches!(&item.data, PageData::Bytes(b) if b.iter().all(|&x| x == MARK)) {
                        own_marked.insert(item.key);
                    }
                    if *result == WriteResult::Stored {
                        fixture.stored.insert(item.key);
                    }
                }
            }
            (Request::Free { pages }, Response::Free { freed }) => {
                assert!(*freed as usize <= pages.len());
            }
            (_, Response::Error { .. }) => {}
            (Request::DropSpace { .. }, Response::DropSpace { .. }) => {}
            (Request::Stats, Response::Stats(s)) => {
                assert!(s.used_bytes <= s.capacity_bytes);
                assert_eq!(s.capacity_bytes, CAPACITY);
            }
            (req, resp) => panic!("{req:?} answered with {resp:?}"),
        }
        let usage = fixture.store.usage();
        assert!(usage.used_bytes <= usage.capacity_bytes);
    }
    assert_eq!(
        fixture.store.tenant_usage(VICTIM),
        fixture.victim_usage,
        "the other tenant's pages changed"
    );
    for &key in &fixture.victim_keys {
        match fixture.store.read(VICTIM, key, 1) {
            ReadResult::Found { version: 1, data } => {
                assert_eq!(data, PageData::Bytes(vec![MARK; PAGE_SIZE]));
            }
            other => panic!("the other tenant's page {key:?} is now {other:?}"),
        }
    }
    fixture.reset();
}

/// Agent side: each response frame of `data`, decoded as the client decodes replies, must
/// round-trip.
pub fn agent_response(data: &[u8]) {
    for payload in payloads(data) {
        if let Ok(resp) = decode_payload::<Response>(payload) {
            round_trip(&resp, payload.len());
        }
    }
}
