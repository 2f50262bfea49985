//! Framing: each message is a 4-byte little-endian payload length followed by a postcard payload.
//!
//! The length is checked against [`MAX_FRAME_BYTES`] before anything is read or allocated, so a
//! peer cannot make the other side buffer an arbitrary amount. Every failure is an error value.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::protocol::{
    SharedPage, SharedWriteItem, BYTES_VARIANT, MAX_FRAME_BYTES, WRITE_VARIANT, ZERO_VARIANT,
};

/// Size of the frame header.
pub const HEADER_BYTES: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The header announced a payload above the hard limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended inside a frame.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// The payload is not a valid message.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The payload decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `msg` as one frame into `buf`, replacing its contents.
pub fn encode_frame<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(msg, taken).map_err(|e| CodecError::Malformed(e.to_string()))?;
    let len = buf.len() - HEADER_BYTES;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    buf[..HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Encodes a [`crate::protocol::Request::Write`] of `items` as one frame in chunks: the
/// chunks, end to end, are exactly the bytes [`encode_frame`] makes of the owned request (a test
/// says so), but each page's content is a chunk of its own, shared with the caller, not copied.
/// A batch written to R servers is then never assembled into R frames of a megabyte each; QUIC
/// takes the chunks as they are (docs/scale.md, "Session 18").
pub fn write_frame_chunks(items: &[SharedWriteItem]) -> Result<Vec<Bytes>, CodecError> {
    let malformed = |e: postcard::Error| CodecError::Malformed(e.to_string());
    // Everything but the contents, in one buffer; `cuts` marks where each content goes.
    let mut small = Vec::with_capacity(HEADER_BYTES + 16 + items.len() * 32);
    small.extend_from_slice(&[0; HEADER_BYTES]);
    // The variant and the length of the page list: postcard's varints.
    small = postcard::to_extend(&(WRITE_VARIANT, items.len() as u64), small).map_err(malformed)?;
    let mut cuts: Vec<(usize, &Bytes)> = Vec::with_capacity(items.len());
    let mut contents = 0usize;
    for item in items {
        small = postcard::to_extend(&(item.key, item.version), small).map_err(malformed)?;
        match &item.data {
            SharedPage::Zero => {
                small = postcard::to_extend(&ZERO_VARIANT, small).map_err(malformed)?;
            }
            SharedPage::Bytes(b) => {
                small = postcard::to_extend(&(BYTES_VARIANT, b.len() as u64), small)
                    .map_err(malformed)?;
                cuts.push((small.len(), b));
                contents += b.len();
            }
        }
    }
    let len = small.len() - HEADER_BYTES + contents;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    small[..HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    let small = Bytes::from(small);
    let mut chunks = Vec::with_capacity(2 * cuts.len() + 1);
    let mut at = 0;
    for (cut, content) in cuts {
        if cut > at {
            chunks.push(small.slice(at..cut));
        }
        if !content.is_empty() {
            chunks.push(content.clone());
        }
        at = cut;
    }
    if small.len() > at {
        chunks.push(small.slice(at..));
    }
    Ok(chunks)
}

/// Reads the payload length from a frame header, rejecting lengths above the limit.
pub fn payload_len(header: [u8; HEADER_BYTES]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(len)
}

/// Decodes a payload (without header) that must hold exactly one message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Decodes the first frame of `input`, returning the message and the number of bytes consumed.
pub fn decode_frame<T: DeserializeOwned>(input: &[u8]) -> Result<(T, usize), CodecError> {
    let Some(header) = input.get(..HEADER_BYTES) else {
        return Err(CodecError::Truncated {
            have: input.len(),
            need: HEADER_BYTES,
        });
    };
    let mut h = [0; HEADER_BYTES];
    h.copy_from_slice(header);
    let len = payload_len(h)?;
    let end = HEADER_BYTES + len;
    let Some(payload) = input.get(HEADER_BYTES..end) else {
        return Err(CodecError::Truncated {
            have: input.len(),
            need: end,
        });
    };
    Ok((decode_payload(payload)?, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;
    use proptest::prelude::*;

    /// The chunks of [`write_frame_chunks`] for `pages`, end to end.
    fn chunked(pages: &[WriteItem]) -> Vec<u8> {
        let shared: Vec<SharedWriteItem> = pages.iter().cloned().map(Into::into).collect();
        write_frame_chunks(&shared).unwrap().concat()
    }

    #[test]
    fn a_write_in_chunks_is_the_same_frame_as_the_owned_request() {
        let pages = [
            WriteItem {
                key: PageKey::new(3, 7),
                version: 9,
                data: PageData::Bytes((0..PAGE_SIZE).map(|i| i as u8).collect()),
            },
            WriteItem {
                key: PageKey::new(u32::MAX, 1 << 40),
                version: u64::MAX,
                data: PageData::Zero,
            },
            WriteItem {
                key: PageKey::new(0, 0),
                version: 0,
                data: PageData::Bytes(vec![]),
            },
            WriteItem {
                key: PageKey::new(1, 300),
                version: 128,
                data: PageData::Bytes(vec![7; 500]),
            },
        ];
        for n in 0..=pages.len() {
            let mut owned = Vec::new();
            encode_frame(
                &Request::Write {
                    pages: pages[..n].to_vec(),
                },
                &mut owned,
            )
            .unwrap();
            assert_eq!(chunked(&pages[..n]), owned, "{n} pages");
        }
        // A full batch, and the contents are shared, not copied.
        let full: Vec<SharedWriteItem> = (0..MAX_BATCH_PAGES as u64)
            .map(|i| SharedWriteItem {
                key: PageKey::new(1, i),
                version: i,
                data: SharedPage::Bytes(Bytes::from(vec![i as u8; PAGE_SIZE])),
            })
            .collect();
        let chunks = write_frame_chunks(&full).unwrap();
        let SharedPage::Bytes(first) = &full[0].data else {
            unreachable!()
        };
        assert!(chunks
            .iter()
            .any(|c| c.as_ptr() == first.as_ptr() && c.len() == PAGE_SIZE));
        let (msg, _) = decode_frame::<Request>(&chunks.concat()).unwrap();
        let Request::Write { pages } = msg else {
            panic!("not a write")
        };
        assert_eq!(pages.len(), MAX_BATCH_PAGES);
        assert_eq!(pages[200].data, PageData::Bytes(vec![200; PAGE_SIZE]));
    }

    #[test]
    fn a_write_in_chunks_over_the_limit_is_refused() {
        let big = vec![SharedWriteItem {
            key: PageKey::new(1, 1),
            version: 1,
            data: SharedPage::Bytes(Bytes::from(vec![1; MAX_FRAME_BYTES + 1])),
        }];
        assert!(matches!(
            write_frame_chunks(&big),
            Err(CodecError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_write_in_chunks_is_the_owned_frame(
            pages in proptest::collection::vec(
                (any::<u32>(), any::<u64>(), any::<u64>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))),
                0..20,
            )
        ) {
            let pages: Vec<WriteItem> = pages
                .into_iter()
                .map(|(space, slot, version, data)| WriteItem {
                    key: PageKey::new(space, slot),
                    version,
                    data: data.map_or(PageData::Zero, PageData::Bytes),
                })
                .collect();
            let mut owned = Vec::new();
            encode_frame(&Request::Write { pages: pages.clone() }, &mut owned).unwrap();
            prop_assert_eq!(chunked(&pages), owned);
        }
    }

    fn sample_requests() -> Vec<Request> {
        vec![
            Request::Hello {
                protocol_version: PROTOCOL_VERSION,
                client: "test".into(),
            },
            Request::Read {
                pages: vec![ReadItem {
                    key: PageKey::new(1, 2),
                    version: 3,
                }],
            },
            Request::Write {
                pages: vec![
                    WriteItem {
                        key: PageKey::new(7, u64::MAX),
                        version: 9,
                        data: PageData::Bytes(vec![0xab; PAGE_SIZE]),
                    },
                    WriteItem {
                        key: PageKey::new(0, 0),
                        version: 1,
                        data: PageData::Zero,
                    },
                ],
            },
            Request::Free {
                pages: vec![FreeItem {
                    key: PageKey::new(1, 1),
                    version: 4,
                }],
            },
            Request::DropSpace { space: 5 },
            Request::Stats,
        ]
    }

    #[test]
    fn requests_round_trip() {
        let mut buf = Vec::new();
        for req in sample_requests() {
            encode_frame(&req, &mut buf).unwrap();
            let (back, used) = decode_frame::<Request>(&buf).unwrap();
            assert_eq!(back, req);
            assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn responses_round_trip() {
        let responses = vec![
            Response::Read {
                pages: vec![
                    ReadResult::Found {
                        version: 2,
                        data: PageData::Bytes(vec![1; PAGE_SIZE]),
                    },
                    ReadResult::Stale { stored_version: 1 },
                    ReadResult::Missing,
                ],
            },
            Response::Write {
                pages: vec![
                    WriteResult::Stored,
                    WriteResult::Superseded { stored_version: 5 },
                    WriteResult::CapacityExceeded,
                ],
            },
            Response::Stats(StatsReply::default()),
            Response::error(ErrorCode::Malformed, "bad"),
        ];
        let mut buf = Vec::new();
        for resp in responses {
            encode_frame(&resp, &mut buf).unwrap();
            assert_eq!(decode_frame::<Response>(&buf).unwrap().0, resp);
        }
    }

    #[test]
    fn full_write_batch_fits_in_a_frame() {
        let pages = (0..MAX_BATCH_PAGES as u64)
            .map(|i| WriteItem {
                key: PageKey::new(u32::MAX, u64::MAX - i),
                version: u64::MAX,
                data: PageData::Bytes(vec![0xff; PAGE_SIZE]),
            })
            .collect();
        let mut buf = Vec::new();
        encode_frame(&Request::Write { pages }, &mut buf).unwrap();
        assert!(buf.len() <= MAX_FRAME_BYTES + HEADER_BYTES);
    }

    #[test]
    fn oversize_header_is_rejected_before_reading() {
        let mut input = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes().to_vec();
        input.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decode_frame::<Request>(&input),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let mut buf = Vec::new();
        encode_frame(&sample_requests()[2], &mut buf).unwrap();
        for cut in [0, 1, 3, 4, 5, buf.len() / 2, buf.len() - 1] {
            assert!(
                matches!(
                    decode_frame::<Request>(&buf[..cut]),
                    Err(CodecError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn unknown_variant_and_trailing_bytes_are_errors() {
        assert!(matches!(
            decode_payload::<Request>(&[200]),
            Err(CodecError::Malformed(_))
        ));
        let mut buf = Vec::new();
        encode_frame(&Request::Stats, &mut buf).unwrap();
        let mut payload = buf[HEADER_BYTES..].to_vec();
        payload.push(0);
        assert_eq!(
            decode_payload::<Request>(&payload),
            Err(CodecError::TrailingBytes(1))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_frame::<Request>(&bytes);
            let _ = decode_payload::<Request>(&bytes);
            let _ = decode_payload::<Response>(&bytes);
        }

        #[test]
        fn read_requests_round_trip(keys in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..64)) {
            let req = Request::Read { pages: keys.iter().map(|&(s, p, v)| ReadItem { key: PageKey::new(s, p), version: v }).collect() };
            let mut buf = Vec::new();
            encode_frame(&req, &mut buf).unwrap();
            prop_assert_eq!(decode_frame::<Request>(&buf).unwrap().0, req);
        }
    }
}
