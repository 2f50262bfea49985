//! The seed corpora: a few valid inputs per target, from which AFL mutates. `cargo run --bin
//! make-seeds` writes them to `seeds/<target>/`; the test below checks that the
//! files match and that every check passes on them (the invariants hold on valid input).

use yonder_agent::{
    daemon::Request as ControlRequest, shim_proto as proto, workload::shim_link::encode_words,
};
use yonder_common::{
    codec::encode_frame,
    protocol::{
        ErrorCode, FreeItem, PageData, PageKey, ReadItem, ReadResult, Request, Response,
        StatsReply, WriteItem, WriteResult, PAGE_SIZE, PROTOCOL_VERSION,
    },
};

/// A seed: its target, file name and bytes.
pub struct Seed {
    /// The target (folder under `seeds/`).
    pub target: &'static str,
    /// File name.
    pub name: &'static str,
    /// Content.
    pub bytes: Vec<u8>,
}

/// Seeds of one target, by file name.
type Named = Vec<(&'static str, Vec<u8>)>;

fn frames<T: serde::Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for m in msgs {
        encode_frame(m, &mut buf).expect("a seed message encodes");
        out.extend_from_slice(&buf);
    }
    out
}

fn hello() -> Request {
    Request::Hello {
        protocol_version: PROTOCOL_VERSION,
        client: "seed".into(),
    }
}

fn page(b: u8) -> PageData {
    PageData::Bytes(vec![b; PAGE_SIZE])
}

fn requests() -> Named {
    let key = PageKey::new(0, 3);
    let write = Request::Write {
        pages: vec![
            WriteItem {
                key,
                version: 2,
                data: page(7),
            },
            WriteItem {
                key: PageKey::new(1, 0),
                version: 1,
                data: PageData::Zero,
            },
        ],
    };
    let read = Request::Read {
        pages: vec![
            ReadItem { key, version: 2 },
            ReadItem {
                key: PageKey::new(0, 0),
                version: 1,
            },
        ],
    };
    let free = Request::Free {
        pages: vec![FreeItem { key, version: 2 }],
    };
    vec![
        ("hello", frames(&[hello()])),
        ("before-hello", frames(&[Request::Stats, hello()])),
        (
            "other-version",
            frames(&[Request::Hello {
                protocol_version: PROTOCOL_VERSION + 1,
                client: "future".into(),
            }]),
        ),
        (
            "write-read",
            frames(&[hello(), write.clone(), read.clone()]),
        ),
        (
            "write-free-stats",
            frames(&[hello(), write, free, Request::Stats]),
        ),
        (
            "drop-space",
            frames(&[hello(), Request::DropSpace { space: 0 }, read]),
        ),
    ]
}

fn responses() -> Named {
    vec![
        (
            "hello",
            frames(&[Response::Hello {
                protocol_version: PROTOCOL_VERSION,
                server: "yonder-server".into(),
                tenant: "client".into(),
                capacity_bytes: 1 << 30,
            }]),
        ),
        (
            "read",
            frames(&[Response::Read {
                pages: vec![
                    ReadResult::Found {
                        version: 3,
                        data: page(1),
                    },
                    ReadResult::Found {
                        version: 1,
                        data: PageData::Zero,
                    },
                    ReadResult::Stale { stored_version: 1 },
                    ReadResult::Missing,
                ],
            }]),
        ),
        (
            "write-free-drop",
            frames(&[
                Response::Write {
                    pages: vec![
                        WriteResult::Stored,
                        WriteResult::Superseded { stored_version: 9 },
                        WriteResult::CapacityExceeded,
                    ],
                },
                Response::Free { freed: 1 },
                Response::DropSpace { freed: 2 },
            ]),
        ),
        (
            "stats-error",
            frames(&[
                Response::Stats(StatsReply {
                    capacity_bytes: 1 << 30,
                    used_bytes: 8192,
                    data_pages: 2,
                    zero_pages: 1,
                    tenant_data_pages: 1,
                    tenant_zero_pages: 1,
                }),
                Response::error(ErrorCode::BatchTooLarge, "too many"),
            ]),
        ),
    ]
}

fn with_flags(flags: u8, words: &[u64]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend(encode_words(words));
    v
}

fn hellos() -> Named {
    let stack = 0x7f00_0000_0000;
    vec![
        (
            "program",
            with_flags(
                1,
                &[
                    proto::MAGIC,
                    proto::VERSION,
                    4242,
                    stack,
                    1 << 16,
                    0x7e00_0000_0000,
                    proto::PARK_PAGES * 4096,
                ],
            ),
        ),
        (
            "forked",
            with_flags(
                0,
                &[
                    proto::FORK_MAGIC,
                    proto::VERSION,
                    4243,
                    4242,
                    1,
                    stack,
                    1 << 16,
                ],
            ),
        ),
        (
            "api",
            with_flags(0, &[proto::API_MAGIC, proto::API_VERSION, 4242]),
        ),
    ]
}

fn api_requests() -> Named {
    let base = 0x7f12_3456_0000;
    let mut all = Vec::new();
    for op in [
        proto::OP_REGISTER,
        proto::OP_PREFETCH,
        proto::OP_FLUSH,
        proto::OP_UNREGISTER,
    ] {
        all.extend(encode_words(&[op, base, 16 * 4096]));
    }
    vec![
        ("register", encode_words(&[proto::OP_REGISTER, base, 4096])),
        ("each-op", all),
        (
            "unaligned",
            encode_words(&[proto::OP_FLUSH, base + 1, 4096]),
        ),
    ]
}

fn control() -> Named {
    let json = |r: &ControlRequest| serde_json::to_vec(r).expect("a control request prints");
    vec![
        (
            "register",
            json(&ControlRequest::Register {
                name: "redis-server".into(),
                budget: 256 << 20,
            }),
        ),
        ("started", json(&ControlRequest::Started { pid: 4242 })),
        ("finish", json(&ControlRequest::Finish)),
        ("status", json(&ControlRequest::Status)),
    ]
}

const SERVER_CONFIG: &str = r#"listen = "127.0.0.1:7070"
capacity = "8GiB"
tls_dir = "/etc/yonder/tls"
cert_name = "server"
metrics = "127.0.0.1:9100"
threads = 2
mtu = 4400
io = "quinn"
spin_us = 200
"#;

const AGENT_CONFIG: &str = r#"socket = "/run/yonder/agent.sock"
node_memory = "16GiB"
default_budget = "512MiB"
servers = ["10.0.0.1:7070", "mem-2.example:7070", "[::1]:7070"]
tls_dir = "/etc/yonder/tls"
cert_name = "client"
mtu = 4400
metrics = "127.0.0.1:9101"
replicas = 2
write_quorum = 1
server_timeout_ms = 2000
eviction_policy = "clock"
"#;

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let groups: [(&'static str, Named); 7] = [
        ("server_request", requests()),
        ("agent_response", responses()),
        ("shim_hello", hellos()),
        ("api_request", api_requests()),
        ("control_request", control()),
        (
            "server_config",
            vec![
                ("full", SERVER_CONFIG.into()),
                ("minimal", b"capacity = \"1GiB\"\n".to_vec()),
            ],
        ),
        (
            "agent_config",
            vec![
                ("full", AGENT_CONFIG.into()),
                ("minimal", b"servers = []\n".to_vec()),
            ],
        ),
    ];
    groups
        .into_iter()
        .flat_map(|(target, seeds)| {
            seeds.into_iter().map(move |(name, bytes)| Seed {
                target,
                name,
                bytes,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn seeds_are_up_to_date_and_pass_every_check() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let seeds = all();
        for (target, check) in crate::TARGETS {
            let mine: Vec<_> = seeds.iter().filter(|s| s.target == *target).collect();
            assert!(!mine.is_empty(), "{target} has no seed");
            let on_disk = std::fs::read_dir(root.join(target))
                .unwrap_or_else(|e| panic!("seeds/{target}: {e}"))
                .count();
            assert_eq!(
                on_disk,
                mine.len(),
                "seeds/{target}: run `cargo run --bin make-seeds`"
            );
            for seed in mine {
                let path = root.join(target).join(seed.name);
                let bytes =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    bytes == seed.bytes,
                    "{}: run `cargo run --bin make-seeds`",
                    path.display()
                );
                check(&bytes);
            }
        }
    }
}
