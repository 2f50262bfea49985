use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn page(byte: u8) -> PageData {
    PageData::Bytes(vec![byte; PAGE_SIZE])
}

fn key(slot: u64) -> PageKey {
    PageKey::new(1, slot)
}

fn found(r: ReadResult) -> (u64, Vec<u8>) {
    match r {
        ReadResult::Found { version, data } => (version, data.to_vec()),
        other => panic!("expected a page, got {other:?}"),
    }
}

#[test]
fn write_then_read_returns_the_bytes() {
    let store = Store::new(1 << 20);
    let mut bytes = vec![0u8; PAGE_SIZE];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    assert_eq!(
        store.write(0, key(9), 1, &PageData::Bytes(bytes.clone())),
        WriteResult::Stored
    );
    assert_eq!(found(store.read(0, key(9), 1)), (1, bytes));
    assert_eq!(store.read(0, key(10), 0), ReadResult::Missing);
}

#[test]
fn older_versions_never_overwrite_newer_ones() {
    let store = Store::new(1 << 20);
    store.write(0, key(1), 5, &page(5));
    assert_eq!(
        store.write(0, key(1), 4, &page(4)),
        WriteResult::Superseded { stored_version: 5 }
    );
    assert_eq!(found(store.read(0, key(1), 5)).1, vec![5; PAGE_SIZE]);
    // The same version again is an idempotent retry and keeps the stored content.
    assert_eq!(store.write(0, key(1), 5, &page(9)), WriteResult::Stored);
    assert_eq!(found(store.read(0, key(1), 5)).1, vec![5; PAGE_SIZE]);
    assert_eq!(store.write(0, key(1), 6, &page(6)), WriteResult::Stored);
    assert_eq!(found(store.read(0, key(1), 6)), (6, vec![6; PAGE_SIZE]));
}

#[test]
fn a_replica_with_an_older_version_answers_stale() {
    let store = Store::new(1 << 20);
    store.write(0, key(1), 3, &page(3));
    assert_eq!(
        store.read(0, key(1), 4),
        ReadResult::Stale { stored_version: 3 }
    );
    assert_eq!(found(store.read(0, key(1), 2)).0, 3);
}

#[test]
fn zero_pages_are_flags_and_cost_little() {
    let store = Store::new(1 << 20);
    store.write(0, key(1), 1, &PageData::Zero);
    store.write(0, key(2), 1, &PageData::Bytes(vec![0; PAGE_SIZE]));
    let u = store.usage();
    assert_eq!((u.data_pages, u.zero_pages), (0, 2));
    assert_eq!(u.used_bytes, 2 * ZERO_PAGE_CHARGE);
    assert_eq!(found(store.read(0, key(2), 1)).1, vec![0; PAGE_SIZE]);
    // Zero -> data -> zero transitions keep the accounting right.
    store.write(0, key(1), 2, &page(1));
    assert_eq!(
        store.usage().used_bytes,
        DATA_PAGE_CHARGE + ZERO_PAGE_CHARGE
    );
    store.write(0, key(1), 3, &PageData::Zero);
    assert_eq!(store.usage().used_bytes, 2 * ZERO_PAGE_CHARGE);
    assert_eq!(found(store.read(0, key(1), 3)).1, vec![0; PAGE_SIZE]);
}

#[test]
fn capacity_is_enforced_without_losing_stored_pages() {
    let store = Store::new(3 * DATA_PAGE_CHARGE);
    for slot in 0..3 {
        assert_eq!(
            store.write(0, key(slot), 1, &page(slot as u8 + 1)),
            WriteResult::Stored
        );
    }
    assert_eq!(
        store.write(0, key(3), 1, &page(9)),
        WriteResult::CapacityExceeded
    );
    // Overwriting a stored page needs no new room.
    assert_eq!(store.write(0, key(0), 2, &page(7)), WriteResult::Stored);
    for slot in 1..3 {
        assert_eq!(
            found(store.read(0, key(slot), 1)).1,
            vec![slot as u8 + 1; PAGE_SIZE]
        );
    }
    assert_eq!(store.read(0, key(3), 0), ReadResult::Missing);
    // Freeing makes room again.
    assert!(store.free(0, key(1), 1));
    assert_eq!(store.write(0, key(3), 1, &page(9)), WriteResult::Stored);
}

#[test]
fn a_full_store_keeps_the_zero_page_when_data_does_not_fit() {
    let store = Store::new(DATA_PAGE_CHARGE + ZERO_PAGE_CHARGE);
    store.write(0, key(0), 1, &page(1));
    store.write(0, key(1), 1, &PageData::Zero);
    assert_eq!(
        store.write(0, key(1), 2, &page(2)),
        WriteResult::CapacityExceeded
    );
    assert_eq!(found(store.read(0, key(1), 1)), (1, vec![0; PAGE_SIZE]));
}

#[test]
fn tenants_are_isolated() {
    let store = Store::new(1 << 20);
    store.write(1, key(1), 1, &page(1));
    assert_eq!(store.read(2, key(1), 0), ReadResult::Missing);
    store.write(2, key(1), 7, &page(2));
    assert!(
        !store.free(2, key(1), 1),
        "version guard applies per tenant"
    );
    assert!(store.free(2, key(1), 7));
    assert_eq!(found(store.read(1, key(1), 1)), (1, vec![1; PAGE_SIZE]));
    assert_eq!(store.drop_space(2, 1), 0);
    assert_eq!(store.tenant_usage(1).data_pages, 1);
    assert_eq!(store.drop_space(1, 1), 1);
    assert_eq!(
        store.usage(),
        StoreUsage {
            capacity_bytes: 1 << 20,
            ..Default::default()
        }
    );
}

#[test]
fn a_free_overtaken_by_a_newer_write_does_nothing() {
    let store = Store::new(1 << 20);
    store.write(0, key(1), 3, &page(3));
    assert!(!store.free(0, key(1), 2));
    assert_eq!(found(store.read(0, key(1), 3)).0, 3);
}

#[test]
fn drop_space_frees_only_that_space() {
    let store = Store::new(1 << 24);
    for slot in 0..100 {
        store.write(0, PageKey::new(1, slot), 1, &page(1));
        store.write(0, PageKey::new(2, slot), 1, &PageData::Zero);
    }
    assert_eq!(store.drop_space(0, 1), 100);
    let u = store.tenant_usage(0);
    assert_eq!((u.data_pages, u.zero_pages), (0, 100));
    assert_eq!(store.usage().used_bytes, 100 * ZERO_PAGE_CHARGE);
}

#[derive(Clone, Debug)]
enum Op {
    Write {
        tenant: u32,
        slot: u64,
        version: u64,
        byte: u8,
    },
    Free {
        tenant: u32,
        slot: u64,
        version: u64,
    },
    Drop {
        tenant: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3u32, 0..16u64, 0..8u64, 0..4u8)
            .prop_map(|(tenant, slot, version, byte)| Op::Write { tenant, slot, version, byte }),
        2 => (0..3u32, 0..16u64, 0..8u64).prop_map(|(tenant, slot, version)| Op::Free { tenant, slot, version }),
        1 => (0..3u32).prop_map(|tenant| Op::Drop { tenant }),
    ]
}

proptest! {
    /// The store behaves like a map of (tenant, key) -> (version, bytes) with a byte budget.
    #[test]
    fn store_matches_a_model(ops in proptest::collection::vec(op(), 1..200), cap_pages in 1..20u64) {
        let cap = cap_pages * DATA_PAGE_CHARGE;
        let store = Store::new(cap);
        let mut model: HashMap<(u32, u64), (u64, u8)> = HashMap::new();
        let charge = |b: u8| if b == 0 { ZERO_PAGE_CHARGE } else { DATA_PAGE_CHARGE };
        for op in ops {
            match op {
                Op::Write { tenant, slot, version, byte } => {
                    let data = if byte == 0 { PageData::Zero } else { page(byte) };
                    let got = store.write(tenant, key(slot), version, &data);
                    let used: u64 = model.values().map(|&(_, b)| charge(b)).sum();
                    let want = match model.get(&(tenant, slot)) {
                        Some(&(v, _)) if v > version => WriteResult::Superseded { stored_version: v },
                        Some(&(v, _)) if v == version => WriteResult::Stored,
                        Some(&(_, old)) => {
                            if used - charge(old) + charge(byte) > cap { WriteResult::CapacityExceeded } else { WriteResult::Stored }
                        }
                        None => if used + charge(byte) > cap { WriteResult::CapacityExceeded } else { WriteResult::Stored },
                    };
                    prop_assert_eq!(got, want);
                    let replace = match model.get(&(tenant, slot)) { Some(&(v, _)) => v < version, None => true };
                    if want == WriteResult::Stored && replace {
                        model.insert((tenant, slot), (version, byte));
                    }
                }
                Op::Free { tenant, slot, version } => {
                    let want = matches!(model.get(&(tenant, slot)), Some(&(v, _)) if v <= version);
                    prop_assert_eq!(store.free(tenant, key(slot), version), want);
                    if want { model.remove(&(tenant, slot)); }
                }
                Op::Drop { tenant } => {
                    let want = model.keys().filter(|k| k.0 == tenant).count() as u64;
                    prop_assert_eq!(store.drop_space(tenant, 1), want);
                    model.retain(|k, _| k.0 != tenant);
                }
            }
            let used: u64 = model.values().map(|&(_, b)| charge(b)).sum();
            prop_assert_eq!(store.usage().used_bytes, used);
        }
        for tenant in 0..3 {
            for slot in 0..16 {
                match model.get(&(tenant, slot)) {
                    Some(&(v, b)) => {
                        let (gv, bytes) = found(store.read(tenant, key(slot), v));
                        prop_assert_eq!(gv, v);
                        prop_assert!(bytes.iter().all(|&x| x == b));
                    }
                    None => prop_assert_eq!(store.read(tenant, key(slot), 0), ReadResult::Missing),
                }
            }
        }
    }
}
