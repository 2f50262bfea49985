//! Messages exchanged between agents and memory servers.
//!
//! Every request and response travels as one length-prefixed postcard frame (see [`crate::codec`])
//! on a QUIC bidirectional stream. The first request on a connection must be [`Request::Hello`],
//! which states the protocol version; the server answers with an error naming both versions when it
//! cannot speak the client's.

use serde::{Deserialize, Serialize};

/// Version of the message set defined in this module; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"yonder";

/// Size of a page in bytes: the unit stored, read and written.
pub const PAGE_SIZE: usize = 4096;

/// Largest number of pages one read, write or free request may carry.
pub const MAX_BATCH_PAGES: usize = 256;

/// Hard limit on the payload of one frame (a full write batch plus generous headroom).
pub const MAX_FRAME_BYTES: usize = MAX_BATCH_PAGES * (PAGE_SIZE + 64) + 64 * 1024;

/// Identifies a page inside a tenant's namespace.
///
/// `space` groups the pages of one address space (a workload) so that they can be dropped at once;
/// `slot` names a page within it. The tenant itself never travels on the wire: the server takes it
/// from the client's certificate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageKey {
    /// Address space (workload) the page belongs to.
    pub space: u32,
    /// Page slot within the space.
    pub slot: u64,
}

impl PageKey {
    /// Builds a key from its parts.
    pub fn new(space: u32, slot: u64) -> Self {
        Self { space, slot }
    }
}

/// Content of a page on the wire.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub enum PageData {
    /// A page of all zero bytes, sent and stored as a flag.
    Zero,
    /// Exactly [`PAGE_SIZE`] bytes.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Whether `bytes` are all zero: 64 bytes at a time (a vector loop), stopping at the first block
/// that is not.
pub fn is_zero_page(bytes: &[u8]) -> bool {
    bytes.chunks(64).all(|block| {
        let mut words = block.chunks_exact(8);
        let acc = words.by_ref().fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
        });
        acc == 0 && words.remainder().iter().all(|&b| b == 0)
    })
}

impl PageData {
    /// Wraps page bytes, turning an all-zero page into [`PageData::Zero`].
    pub fn from_bytes(bytes: &[u8]) -> Self {
        if is_zero_page(bytes) {
            PageData::Zero
        } else {
            PageData::Bytes(bytes.to_vec())
        }
    }

    /// Copies the page into `out` (which must be [`PAGE_SIZE`] long).
    pub fn copy_to(&self, out: &mut [u8]) {
        match self {
            PageData::Zero => out.fill(0),
            PageData::Bytes(b) => out.copy_from_slice(b),
        }
    }

    /// Returns the page as a fresh vector of [`PAGE_SIZE`] bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; PAGE_SIZE];
        self.copy_to(&mut v);
        v
    }
}

impl std::fmt::Debug for PageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageData::Zero => write!(f, "Zero"),
            PageData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

/// One page to read, with the version the reader expects.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadItem {
    /// Page to read.
    pub key: PageKey,
    /// Version the reader last wrote; a replica holding an older one answers [`ReadResult::Stale`].
    pub version: u64,
}

/// One page to write.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WriteItem {
    /// Page to write.
    pub key: PageKey,
    /// Monotonic version of this content; a write never replaces a newer version.
    pub version: u64,
    /// The content.
    pub data: PageData,
}

/// A page's content as the requests that carry it hold it: shared (one per replica) and handed
/// to QUIC without a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedPage {
    /// A page of all zero bytes.
    Zero,
    /// The page's bytes.
    Bytes(bytes::Bytes),
}

impl From<PageData> for SharedPage {
    fn from(d: PageData) -> Self {
        match d {
            PageData::Zero => SharedPage::Zero,
            PageData::Bytes(b) => SharedPage::Bytes(bytes::Bytes::from(b)),
        }
    }
}

/// One page to write, its content shared: what [`crate::codec::write_frame_chunks`] encodes as
/// a [`Request::Write`] frame in chunks.
#[derive(Clone, Debug)]
pub struct SharedWriteItem {
    /// Page to write.
    pub key: PageKey,
    /// Monotonic version of this content.
    pub version: u64,
    /// The content.
    pub data: SharedPage,
}

impl From<WriteItem> for SharedWriteItem {
    fn from(w: WriteItem) -> Self {
        SharedWriteItem {
            key: w.key,
            version: w.version,
            data: w.data.into(),
        }
    }
}

/// [`Request::Write`]'s position among the variants: serde's (and postcard's) variant index.
pub(crate) const WRITE_VARIANT: u32 = 2;
/// [`PageData::Zero`]'s variant index.
pub(crate) const ZERO_VARIANT: u32 = 0;
/// [`PageData::Bytes`]'s variant index.
pub(crate) const BYTES_VARIANT: u32 = 1;

/// One page to free.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeItem {
    /// Page to free.
    pub key: PageKey,
    /// Frees the page only if its stored version is at most this one, so a free overtaken by a
    /// later write cannot destroy the later content.
    pub version: u64,
}

/// A request from an agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Opens the session; must come first on every connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// Free-form client description for logs.
        client: String,
    },
    /// Reads a batch of pages.
    Read {
        /// Pages to read, at most [`MAX_BATCH_PAGES`].
        pages: Vec<ReadItem>,
    },
    /// Writes a batch of pages.
    Write {
        /// Pages to write, at most [`MAX_BATCH_PAGES`].
        pages: Vec<WriteItem>,
    },
    /// Frees a batch of pages.
    Free {
        /// Pages to free, at most [`MAX_BATCH_PAGES`].
        pages: Vec<FreeItem>,
    },
    /// Frees every page of one space of the caller's tenant.
    DropSpace {
        /// The space to drop.
        space: u32,
    },
    /// Asks for the server's and the caller's usage.
    Stats,
}

impl Request {
    /// Short name of the operation, used as a metrics label.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Free { .. } => "free",
            Request::DropSpace { .. } => "drop_space",
            Request::Stats => "stats",
        }
    }
}

/// Outcome of reading one page.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ReadResult {
    /// The page, at the stored version (at least the expected one).
    Found {
        /// Version stored.
        version: u64,
        /// Content.
        data: PageData,
    },
    /// The replica only has an older version than the reader expects: it must not be used.
    Stale {
        /// Version stored here.
        stored_version: u64,
    },
    /// The page is not stored here.
    Missing,
}

/// Outcome of writing one page.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// Stored (or already stored at this very version).
    Stored,
    /// A newer version is stored; this write was ignored.
    Superseded {
        /// Version stored here.
        stored_version: u64,
    },
    /// The server is full; nothing was changed for this page.
    CapacityExceeded,
}

/// Usage figures returned by [`Request::Stats`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsReply {
    /// Capacity of the server in bytes.
    pub capacity_bytes: u64,
    /// Bytes charged against the capacity, all tenants.
    pub used_bytes: u64,
    /// Pages stored with content, all tenants.
    pub data_pages: u64,
    /// Pages stored as zero flags, all tenants.
    pub zero_pages: u64,
    /// Pages stored with content by the caller's tenant.
    pub tenant_data_pages: u64,
    /// Zero pages stored by the caller's tenant.
    pub tenant_zero_pages: u64,
}

/// Machine-readable reason of an error reply.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame could not be decoded as a request.
    Malformed,
    /// The frame header announced more than [`MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// The stream ended inside a frame.
    Truncated,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// A request came before the hello.
    HelloRequired,
    /// A batch held more than [`MAX_BATCH_PAGES`] pages.
    BatchTooLarge,
    /// A page did not hold exactly [`PAGE_SIZE`] bytes.
    InvalidPage,
}

impl ErrorCode {
    /// Short name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Truncated => "truncated",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::InvalidPage => "invalid_page",
        }
    }
}

/// A reply from a memory server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Accepts the session.
    Hello {
        /// The server's [`PROTOCOL_VERSION`].
        protocol_version: u16,
        /// Server software and version.
        server: String,
        /// Tenant name taken from the client certificate.
        tenant: String,
        /// Capacity of the server in bytes.
        capacity_bytes: u64,
    },
    /// Results of a read, in request order.
    Read {
        /// One result per requested page.
        pages: Vec<ReadResult>,
    },
    /// Results of a write, in request order.
    Write {
        /// One result per written page.
        pages: Vec<WriteResult>,
    },
    /// Result of a free.
    Free {
        /// How many pages were freed.
        freed: u64,
    },
    /// Result of dropping a space.
    DropSpace {
        /// How many pages were freed.
        freed: u64,
    },
    /// Usage figures.
    Stats(StatsReply),
    /// The request failed as a whole.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

impl Response {
    /// Builds an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_zero_only_when_every_byte_is() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(is_zero_page(&page));
        assert_eq!(PageData::from_bytes(&page), PageData::Zero);
        for at in [0, 7, 63, 64, 2048, PAGE_SIZE - 1] {
            page[at] = 1;
            assert!(!is_zero_page(&page), "byte {at} set");
            assert!(matches!(PageData::from_bytes(&page), PageData::Bytes(_)));
            page[at] = 0;
        }
        // Lengths that are not a multiple of the word or the block.
        assert!(is_zero_page(&[0; 13]));
        assert!(!is_zero_page(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
        assert!(is_zero_page(&[]));
    }
}
