//! The word protocol from the shim as the agent decodes it: the hello (program, forked child or
//! client-API connection) and the client-API requests that follow an API hello.

use std::{fs::File, io, os::fd::OwnedFd, sync::OnceLock};

use yonder_agent::{
    fdpass::{parse_hello, HelloKind},
    pages::PAGE,
    shim_proto as proto,
    workload::{
        api::parse_request,
        shim_link::{decode_words, encode_words},
    },
};

/// A descriptor to pass along with a hello, as the kernel would hand one over (a copy of
/// `/dev/null`: the parser only keeps it).
fn some_fd() -> OwnedFd {
    static NULL: OnceLock<File> = OnceLock::new();
    let null = NULL.get_or_init(|| File::open("/dev/null").expect("/dev/null opens"));
    null.try_clone().expect("dup of /dev/null").into()
}

/// Opens the `/dev/null` that [`shim_hello`] passes along before AFL's fork server starts, so that
/// no fuzzing process takes its first input down a path (the open) that no later input takes.
pub fn shim_hello_setup() {
    drop(some_fd());
}

/// The hello: the first byte says whether a descriptor came with it (bit 0), the rest is the
/// message as `recvmsg` returned it. Checks: an accepted hello is exactly the encoding of what
/// it was parsed into (so no word was ignored, truncated or defaulted), a program's hello
/// carries a descriptor.
pub fn shim_hello(data: &[u8]) {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let had_fd = flags & 1 == 1;
    let fd = had_fd.then(some_fd);
    let Ok(hello) = parse_hello(bytes, fd) else {
        return;
    };
    let pid = u64::from(hello.pid);
    let words = match hello.kind {
        HelloKind::Program(_) => {
            assert!(
                had_fd,
                "a program's hello was accepted without a userfaultfd"
            );
            vec![
                proto::MAGIC,
                proto::VERSION,
                pid,
                hello.helper_stack.0,
                hello.helper_stack.1,
                hello.parking.0,
                hello.parking.1,
            ]
        }
        HelloKind::Forked { ppid, seq } => {
            assert_eq!(hello.parking, (0, 0));
            vec![
                proto::FORK_MAGIC,
                proto::VERSION,
                pid,
                u64::from(ppid),
                seq,
                hello.helper_stack.0,
                hello.helper_stack.1,
            ]
        }
        HelloKind::Api => {
            assert_eq!((hello.helper_stack, hello.parking), ((0, 0), (0, 0)));
            vec![proto::API_MAGIC, proto::API_VERSION, pid]
        }
        HelloKind::Listener(_) => {
            assert!(
                had_fd,
                "a listener hello was accepted without its descriptor"
            );
            assert_eq!((hello.helper_stack, hello.parking), ((0, 0), (0, 0)));
            vec![proto::LISTEN_MAGIC, proto::VERSION, pid]
        }
    };
    assert_eq!(
        encode_words(&words),
        bytes,
        "the hello was accepted as something other than what it says"
    );
}

/// The client-API requests of one connection: `data` is the byte stream after the hello.
/// Checks: each message decodes as the agent reads it (a count of 1 to `MAX_WORDS`, then the
/// words) and re-encodes to the same bytes; an accepted request is a known operation on a
/// non-empty, page-aligned range that does not wrap, and is exactly the words it came from; a
/// refused one gets `EINVAL` or, for an unknown operation on a good range, `EOPNOTSUPP`.
pub fn api_request(mut data: &[u8]) {
    loop {
        let (words, used) = match decode_words(data) {
            Ok(decoded) => decoded,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
                    assert!(n == 0 || n > proto::MAX_WORDS as u64, "count {n} refused");
                } else {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                }
                return;
            }
        };
        assert!((1..=proto::MAX_WORDS).contains(&words.len()));
        assert_eq!(used, 8 * (words.len() + 1));
        assert_eq!(encode_words(&words), &data[..used]);
        data = &data[used..];
        match parse_request(&words) {
            Ok(req) => {
                assert!(matches!(
                    req.op,
                    proto::OP_REGISTER
                        | proto::OP_UNREGISTER
                        | proto::OP_PREFETCH
                        | proto::OP_FLUSH
                ));
                assert!(req.start < req.end);
                assert_eq!(req.start % PAGE, 0);
                assert_eq!(req.end % PAGE, 0);
                assert_eq!(words, [req.op, req.start, req.end - req.start]);
            }
            Err(libc::EINVAL) => {}
            Err(libc::EOPNOTSUPP) => {
                let &[_, start, len] = &words[..] else {
                    panic!("EOPNOTSUPP for a request of {} words", words.len());
                };
                assert!(start % PAGE == 0 && len % PAGE == 0 && len > 0);
                assert!(start.checked_add(len).is_some());
            }
            Err(errno) => panic!("unexpected errno {errno} for {words:?}"),
        }
    }
}
