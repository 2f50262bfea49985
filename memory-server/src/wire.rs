//! Write requests decoded in place: page bytes are borrowed from the received frame.
//!
//! Decoding a [`Request::Write`] into the common types allocates a `Vec` per page and copies the
//! page into it, only for the store to copy it again into its frame. [`decode_write`] decodes the
//! same bytes into views that borrow the pages from the frame, so each page is copied once, into
//! the store. Any other request decodes as usual.
//!
//! [`Request::Write`]: yonder_common::protocol::Request::Write

use serde::Deserialize;
use yonder_common::{codec::CodecError, PageKey};

/// Variant index of `Request::Write` in postcard's encoding of `Request` (a one-byte varint).
const REQUEST_WRITE: u8 = 2;

/// A page's content as sent, borrowed from the frame (mirrors `PageData`).
#[derive(Deserialize, Debug, PartialEq, Eq)]
pub enum PageBytes<'a> {
    /// An all-zero page.
    Zero,
    /// The page's bytes (the handler checks the length).
    Bytes(&'a [u8]),
}

impl<'a> PageBytes<'a> {
    /// The bytes, or `None` for a zero page.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self {
            PageBytes::Zero => None,
            PageBytes::Bytes(b) => Some(b),
        }
    }
}

/// One page to write, borrowed from the frame (mirrors `WriteItem`).
#[derive(Deserialize, Debug, PartialEq, Eq)]
pub struct WriteRef<'a> {
    /// Page to write.
    pub key: PageKey,
    /// Version of this content.
    pub version: u64,
    /// The content.
    #[serde(borrow)]
    pub data: PageBytes<'a>,
}

#[derive(Deserialize)]
struct WriteBody<'a> {
    #[serde(borrow)]
    pages: Vec<WriteRef<'a>>,
}

/// Decodes `payload` as a write request with borrowed pages; `None` if it is another request.
pub fn decode_write(payload: &[u8]) -> Option<Result<Vec<WriteRef<'_>>, CodecError>> {
    let body = payload.strip_prefix(&[REQUEST_WRITE])?;
    Some(match postcard::take_from_bytes::<WriteBody<'_>>(body) {
        Ok((w, [])) => Ok(w.pages),
        Ok((_, rest)) => Err(CodecError::TrailingBytes(rest.len())),
        Err(e) => Err(CodecError::Malformed(e.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use yonder_common::{
        codec::{decode_payload, encode_frame, HEADER_BYTES},
        protocol::{PageData, Request, WriteItem},
        PAGE_SIZE,
    };

    use super::*;

    fn payload(req: &Request) -> Vec<u8> {
        let mut frame = Vec::new();
        encode_frame(req, &mut frame).unwrap();
        frame.split_off(HEADER_BYTES)
    }

    #[test]
    fn decodes_what_the_client_encodes() {
        let pages = vec![
            WriteItem {
                key: PageKey::new(3, u64::MAX),
                version: 1 << 50,
                data: PageData::Bytes((0..PAGE_SIZE).map(|i| i as u8).collect()),
            },
            WriteItem {
                key: PageKey::new(0, 0),
                version: 0,
                data: PageData::Zero,
            },
            WriteItem {
                key: PageKey::new(u32::MAX, 7),
                version: 9,
                data: PageData::Bytes(vec![5; 10]),
            },
        ];
        let bytes = payload(&Request::Write {
            pages: pages.clone(),
        });
        let got = decode_write(&bytes).unwrap().unwrap();
        assert_eq!(got.len(), pages.len());
        for (g, w) in got.iter().zip(&pages) {
            assert_eq!((g.key, g.version), (w.key, w.version));
            match &w.data {
                PageData::Zero => assert_eq!(g.data, PageBytes::Zero),
                PageData::Bytes(b) => assert_eq!(g.data.bytes(), Some(&b[..])),
            }
        }
        let empty = payload(&Request::Write { pages: Vec::new() });
        assert_eq!(decode_write(&empty).unwrap().unwrap(), Vec::new());
    }

    #[test]
    fn other_requests_are_left_to_the_generic_decoder() {
        for req in [
            Request::Stats,
            Request::Read { pages: Vec::new() },
            Request::DropSpace { space: 2 },
        ] {
            let bytes = payload(&req);
            assert!(decode_write(&bytes).is_none());
            assert_eq!(decode_payload::<Request>(&bytes).unwrap(), req);
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        let mut bytes = payload(&Request::Write {
            pages: vec![WriteItem {
                key: PageKey::new(1, 1),
                version: 1,
                data: PageData::Zero,
            }],
        });
        bytes.push(0);
        assert!(matches!(
            decode_write(&bytes),
            Some(Err(CodecError::TrailingBytes(1)))
        ));
        assert!(matches!(
            decode_write(&[REQUEST_WRITE, 5, 1]),
            Some(Err(CodecError::Malformed(_)))
        ));
        // Generic decoding agrees on what is malformed.
        assert!(decode_payload::<Request>(&[REQUEST_WRITE, 5, 1]).is_err());
    }
}
