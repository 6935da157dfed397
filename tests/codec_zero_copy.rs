//! `Bytes` values cross the wire without copies: decoded as slices of the received frame.

mod common;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Two byte strings with their own `with` attribute, to see where they were decoded.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pair {
    #[serde(with = "pb::zero_copy")]
    a: Bytes,
    #[serde(with = "pb::zero_copy")]
    b: Bytes,
}

#[pb::remote]
trait Blobs {
    /// Where the callee found its two arguments: `b` right after `a` and its length prefix
    /// means both are slices of one buffer, the received frame.
    async fn adjacent(&self, a: Bytes, b: Bytes) -> Result<bool, ()>;
    async fn echo(&self, data: Bytes) -> Result<Bytes, ()>;
    async fn pair(&self, a: Bytes, b: Bytes) -> Result<Pair, ()>;
}

struct BlobsImpl;

/// Whether `b` starts right after `a` and its three-byte length prefix (bincode's varint for
/// lengths from 251 to 65 535), as it does in the frame.
fn follows(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() as usize + a.len() + 3 == b.as_ptr() as usize
}

/// Large enough to be shared rather than copied.
const BIG: usize = 5000;

impl Blobs for BlobsImpl {
    async fn adjacent(&self, a: Bytes, b: Bytes) -> Result<bool, ()> {
        Ok(follows(&a, &b))
    }
    async fn echo(&self, data: Bytes) -> Result<Bytes, ()> {
        Ok(data)
    }
    async fn pair(&self, a: Bytes, b: Bytes) -> Result<Pair, ()> {
        Ok(Pair { a, b })
    }
}

#[tokio::test]
async fn bytes_arguments_are_slices_of_the_received_frame() {
    let (_server, client) = common::memory_pair(BlobsRef::new(BlobsImpl)).await;
    let root: BlobsRef = client.root();
    let (a, b) = (Bytes::from(vec![1u8; BIG]), Bytes::from(vec![2u8; BIG]));
    assert_eq!(root.adjacent(a, b).await, Ok(true));
    // Small ones are copied: they would keep the whole receive buffer alive.
    let (a, b) = (Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 300]));
    assert_eq!(root.adjacent(a, b).await, Ok(false));
}

#[tokio::test]
async fn fields_marked_zero_copy_are_slices_of_the_received_frame() {
    let (_server, client) = common::memory_pair(BlobsRef::new(BlobsImpl)).await;
    let root: BlobsRef = client.root();
    let (a, b) = (Bytes::from(vec![1u8; BIG]), Bytes::from(vec![2u8; BIG + 1]));
    let pair = root.pair(a.clone(), b.clone()).await.unwrap();
    assert_eq!((&pair.a, &pair.b), (&a, &b));
    assert!(follows(&pair.a, &pair.b));
}

#[tokio::test]
async fn bytes_results_round_trip_at_any_size() {
    let (_server, client) = common::memory_pair(BlobsRef::new(BlobsImpl)).await;
    let root: BlobsRef = client.root();
    for len in [0, 1, 250, 251, 4095, 4096, 70_000, 1 << 20] {
        let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
        assert_eq!(root.echo(data.clone()).await, Ok(data), "{len} bytes");
    }
}

#[test]
fn outside_a_frame_the_value_is_copied() {
    let pair = Pair {
        a: Bytes::from(vec![7u8; BIG]),
        b: Bytes::from_static(b"ab"),
    };
    let (encoded, _) = pb::codec::encode(&pair, None).unwrap();
    let range = encoded.as_ptr() as usize..encoded.as_ptr() as usize + encoded.len();
    // From a plain slice: a copy, equal.
    let back: Pair = pb::codec::decode(&encoded, vec![]).unwrap();
    assert_eq!((&back.a, &back.b), (&pair.a, &pair.b));
    assert!(!range.contains(&(back.a.as_ptr() as usize)));
    // From a `Bytes`: a slice of it if large, a copy if small.
    let back: Pair = pb::codec::decode_shared(&encoded, vec![], 8).unwrap();
    assert_eq!((&back.a, &back.b), (&pair.a, &pair.b));
    assert!(range.contains(&(back.a.as_ptr() as usize)));
    assert!(!range.contains(&(back.b.as_ptr() as usize)));
}

/// The same interface as a peer that declares its byte strings as plain serde sequences of
/// `u8` (a wrapper type the byte-string path does not pick) would see it.
#[pb::remote]
trait Vecs {
    async fn echo_vec(&self, data: Vec<u8>) -> Result<Vec<u8>, ()>;
    async fn echo_boxed(&self, data: Box<[u8]>) -> Result<Box<[u8]>, ()>;
}

struct VecsImpl;

impl Vecs for VecsImpl {
    async fn echo_vec(&self, data: Vec<u8>) -> Result<Vec<u8>, ()> {
        Ok(data)
    }
    async fn echo_boxed(&self, data: Box<[u8]>) -> Result<Box<[u8]>, ()> {
        Ok(data)
    }
}

#[tokio::test]
async fn vec_and_boxed_byte_arguments_round_trip_whole() {
    let (_server, client) = common::memory_pair(VecsRef::new(VecsImpl)).await;
    let root: VecsRef = client.root();
    for len in [0, 1, 250, 251, 65_535, 65_536, 1 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        assert_eq!(root.echo_vec(data.clone()).await.unwrap(), data);
        let boxed = data.into_boxed_slice();
        assert_eq!(root.echo_boxed(boxed.clone()).await.unwrap(), boxed);
    }
}

#[test]
fn a_vec_of_bytes_is_the_same_on_the_wire_either_way() {
    use pb::__private::{Wire, WireBytes};
    for len in [0usize, 5, 300, 70_000] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        // One byte string, or serde's sequence of u8: the same bytes.
        let held = Wire::<Vec<u8>>::new().hold(data.clone());
        let fast = pb::codec::encode(&(Wire::<Vec<u8>>::new().wire(&held),), None)
            .unwrap()
            .0;
        let plain = pb::codec::encode(&(data.clone(),), None).unwrap().0;
        assert_eq!(fast, plain);
        // And each decodes the other's.
        let (back,): (Vec<u8>,) = pb::codec::decode(&fast, vec![]).unwrap();
        assert_eq!(back, data);
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Upload {
    name: String,
    #[serde(with = "pb::zero_copy::vec")]
    data: Vec<u8>,
}

#[test]
fn vec_fields_marked_for_it_are_one_byte_string_with_the_same_bytes() {
    #[derive(Serialize)]
    struct Plain<'a> {
        name: &'a str,
        data: &'a Vec<u8>,
    }
    let up = Upload {
        name: "f".into(),
        data: (0..70_000).map(|i| i as u8).collect(),
    };
    let fast = pb::codec::encode(&up, None).unwrap().0;
    let plain = pb::codec::encode(
        &Plain {
            name: &up.name,
            data: &up.data,
        },
        None,
    )
    .unwrap()
    .0;
    assert_eq!(fast, plain);
    let back: Upload = pb::codec::decode(&fast, vec![]).unwrap();
    assert_eq!(back, up);
}

#[test]
// The borrow is what picks the path (method lookup tries `&Wire<T>` before `&&Wire<T>`).
#[allow(clippy::needless_borrow)]
fn generated_code_picks_the_byte_string_path_for_byte_vectors_only() {
    // The same method calls `#[pb::remote]` generates: each `let` fails to compile if the
    // picker takes another path.
    use pb::__private::{Wire, WireBytes as _, WireSerde as _};
    let _: pb::zero_copy::VecBytes = (&Wire::<Vec<u8>>::new()).seed();
    let _: pb::zero_copy::BoxedBytes = (&Wire::<Box<[u8]>>::new()).seed();
    let _: pb::zero_copy::SharedBytes = (&Wire::<Bytes>::new()).seed();
    let _: pb::zero_copy::StringSeed = (&Wire::<String>::new()).seed();
    let _: std::marker::PhantomData<Vec<u16>> = (&Wire::<Vec<u16>>::new()).seed();
    // Owned byte vectors are held as `Bytes` while they are sent: no copy.
    let data = vec![1u8, 2, 3];
    let at = data.as_ptr();
    let held: Bytes = (&Wire::<Vec<u8>>::new()).hold(data);
    assert_eq!(held.as_ptr(), at);
    let _: pb::zero_copy::BytesRef<'_> = (&Wire::<Vec<u8>>::new()).wire(&held);
    let boxed: Box<[u8]> = vec![4u8; 10].into_boxed_slice();
    let at = boxed.as_ptr();
    assert_eq!((&Wire::<Box<[u8]>>::new()).hold(boxed).as_ptr(), at);
    // Every other type is held as itself.
    let words: Vec<u16> = (&Wire::<Vec<u16>>::new()).hold(vec![1u16]);
    assert_eq!(words, [1]);
}

/// `#[pb::copyable]` gives `Vec<u8>` fields the byte-string encoding by itself (the bytes on
/// the wire are the same), and leaves alone fields whose serde attributes say otherwise.
#[pb::copyable]
#[derive(Debug, PartialEq, Clone)]
struct Blob {
    name: String,
    data: Vec<u8>,
    /// Left out of the encoding: the macro adds nothing to it.
    #[serde(skip)]
    cache: Vec<u8>,
    /// Its own choice stands (a second `with` would not compile).
    #[serde(with = "pb::zero_copy::vec")]
    chosen: Vec<u8>,
    kind: BlobKind,
}

#[pb::copyable]
#[derive(Debug, PartialEq, Clone)]
enum BlobKind {
    Raw(std::vec::Vec<u8>),
    Named { bytes: Vec<u8>, words: Vec<u16> },
}

#[test]
fn copyable_byte_vector_fields_are_byte_strings_with_the_same_bytes() {
    #[derive(Serialize)]
    struct Plain<'a> {
        name: &'a str,
        data: &'a Vec<u8>,
        chosen: &'a Vec<u8>,
        kind: PlainKind<'a>,
    }
    #[derive(Serialize)]
    enum PlainKind<'a> {
        #[allow(dead_code)]
        Raw(&'a Vec<u8>),
        Named {
            bytes: &'a Vec<u8>,
            words: &'a Vec<u16>,
        },
    }
    let blob = Blob {
        name: "b".into(),
        data: (0..70_000).map(|i| i as u8).collect(),
        cache: vec![9; 3],
        chosen: vec![1, 2, 3],
        kind: BlobKind::Named {
            bytes: vec![4; 300],
            words: vec![5, 6],
        },
    };
    let BlobKind::Named { bytes, words } = &blob.kind else {
        unreachable!()
    };
    let fast = pb::codec::encode(&blob, None).unwrap().0;
    let plain = pb::codec::encode(
        &Plain {
            name: &blob.name,
            data: &blob.data,
            chosen: &blob.chosen,
            kind: PlainKind::Named { bytes, words },
        },
        None,
    )
    .unwrap()
    .0;
    assert_eq!(fast, plain);
    let back: Blob = pb::codec::decode(&fast, vec![]).unwrap();
    assert_eq!(
        back,
        Blob {
            cache: vec![],
            ..blob
        }
    );
}

#[test]
fn a_copyable_byte_vector_is_read_as_one_byte_string_not_element_by_element() {
    // The depth guard counts a sequence as one level of nesting and a byte string as none: the
    // fewest levels each type decodes under tells which way its field was read.
    #[pb::copyable]
    #[derive(Debug, PartialEq)]
    struct Fast {
        data: Vec<u8>,
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Slow {
        data: Vec<u8>,
    }
    let bytes = pb::codec::encode(
        &Slow {
            data: vec![1, 2, 3],
        },
        None,
    )
    .unwrap()
    .0;
    let fewest = |decodes: &dyn Fn(usize) -> bool| (0..8).find(|d| decodes(*d)).unwrap();
    let fast = fewest(&|d| pb::codec::decode_with_depth::<Fast>(&bytes, vec![], d).is_ok());
    let slow = fewest(&|d| pb::codec::decode_with_depth::<Slow>(&bytes, vec![], d).is_ok());
    assert_eq!(fast + 1, slow, "the copyable's field is one byte string");
}

use common::IoLog;

/// Where the server's handlers found their arguments (the decoded value's bytes).
#[derive(Clone, Default)]
struct Seen(std::sync::Arc<std::sync::Mutex<Vec<usize>>>);

#[pb::remote]
trait Sends {
    async fn echo(&self, data: Bytes) -> Result<Bytes, ()>;
    async fn echo_vec(&self, data: Vec<u8>) -> Result<Vec<u8>, ()>;
    async fn echo_boxed(&self, data: Box<[u8]>) -> Result<Box<[u8]>, ()>;
    async fn pair(&self, a: Bytes, b: Bytes) -> Result<Pair, ()>;
    async fn echo_string(&self, text: String) -> Result<String, ()>;
    /// Borrowed parameters: the sum of `data`'s bytes, and `label` as it arrived.
    async fn borrowed(&self, label: &str, data: &[u8]) -> Result<(u64, String), ()>;
    async fn record(&self, record: Record) -> Result<Record, ()>;
}

/// A copyable value with byte strings of each kind the macro sees.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    data: Bytes,
    sealed: Box<[u8]>,
    name: String,
}

impl Sends for Seen {
    async fn record(&self, record: Record) -> Result<Record, ()> {
        self.0.lock().unwrap().push(record.data.as_ptr() as usize);
        Ok(record)
    }
    async fn borrowed(&self, label: &str, data: &[u8]) -> Result<(u64, String), ()> {
        self.0.lock().unwrap().push(data.as_ptr() as usize);
        Ok((data.iter().map(|b| u64::from(*b)).sum(), label.to_owned()))
    }
    async fn echo_string(&self, text: String) -> Result<String, ()> {
        self.0.lock().unwrap().push(text.as_ptr() as usize);
        Ok(text)
    }
    async fn echo(&self, data: Bytes) -> Result<Bytes, ()> {
        self.0.lock().unwrap().push(data.as_ptr() as usize);
        Ok(data)
    }
    async fn echo_vec(&self, data: Vec<u8>) -> Result<Vec<u8>, ()> {
        self.0.lock().unwrap().push(data.as_ptr() as usize);
        Ok(data)
    }
    async fn echo_boxed(&self, data: Box<[u8]>) -> Result<Box<[u8]>, ()> {
        self.0.lock().unwrap().push(data.as_ptr() as usize);
        Ok(data)
    }
    async fn pair(&self, a: Bytes, b: Bytes) -> Result<Pair, ()> {
        let mut seen = self.0.lock().unwrap();
        seen.push(a.as_ptr() as usize);
        seen.push(b.as_ptr() as usize);
        Ok(Pair { a, b })
    }
}

/// Both ends over recording transports: the server's log, and the client's.
async fn recorded_pair(seen: Seen) -> (pb::Connection, pb::Connection, IoLog, IoLog) {
    recorded_pair_with(seen, pb::Config::default()).await
}

/// As [`recorded_pair`], the client with `config`.
async fn recorded_pair_with(
    seen: Seen,
    config: pb::Config,
) -> (pb::Connection, pb::Connection, IoLog, IoLog) {
    let (a, b) = pb::transport::memory_pair();
    let ((a, server_log), (b, client_log)) = (common::Recording::new(a), common::Recording::new(b));
    let server_config = pb::Config::default();
    let server = pb::Connection::establish(
        a,
        &server_config,
        pb::Side::Server,
        Some(SendsRef::new(seen).into()),
        None,
    );
    let client = pb::Connection::establish(b, &config, pb::Side::Client, None, None);
    let (server, client) = tokio::try_join!(server, client).unwrap();
    (server, client, server_log, client_log)
}

#[tokio::test]
async fn strings_are_sent_from_where_they_are_and_large_ones_received_into_their_own() {
    let seen = Seen::default();
    let (_server, client, server_log, client_log) = recorded_pair(seen.clone()).await;
    let root: SendsRef = client.root();
    for len in [0usize, 10, 5000, 100_000, 1 << 20] {
        // Text that is not all ASCII, cut at a character boundary.
        let text: String = "añb€".chars().cycle().take(len / 2).collect();
        let at = text.as_ptr();
        let want = text.clone();
        assert_eq!(root.echo_string(text).await.unwrap(), want, "{len}");
        let large = want.len() >= 4096;
        assert_eq!(client_log.written_from(at, want.len()), large, "{len}");
        if want.len() >= pb::proto::frame::MIN_TAIL {
            let at = *seen.0.lock().unwrap().last().unwrap();
            assert!(server_log.read_into(at, want.len()), "{len}");
        }
    }
}

#[tokio::test]
async fn a_borrowed_byte_slice_is_lent_from_the_received_bytes() {
    let seen = Seen::default();
    let (_server, client, server_log, _) = recorded_pair(seen.clone()).await;
    let root: SendsRef = client.root();
    for len in [0usize, 10, 5000, 100_000, 1 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let sum = data.iter().map(|b| u64::from(*b)).sum();
        let label = format!("añb{len}");
        assert_eq!(
            root.borrowed(&label, &data).await,
            Ok((sum, label.clone())),
            "{len}"
        );
        // A large slice is lent from where the server's transport read it (the frame, or a
        // split frame's tail), not from a copy. (Only the positive case can be seen: an
        // allocation may reuse the address of a buffer read into earlier.)
        if len >= 4096 {
            let at = *seen.0.lock().unwrap().last().unwrap();
            assert!(server_log.read_around(at, len), "{len}");
        }
    }
}

#[tokio::test]
async fn a_copyable_bytes_field_is_sent_uncopied_and_received_as_a_slice_of_the_frame() {
    let seen = Seen::default();
    let (_server, client, server_log, client_log) = recorded_pair(seen.clone()).await;
    let root: SendsRef = client.root();
    for len in [0usize, 10, 5000, 100_000] {
        let record = Record {
            data: (0..len).map(|i| (i * 3) as u8).collect::<Vec<u8>>().into(),
            sealed: vec![7u8; 300].into_boxed_slice(),
            name: "r".into(),
        };
        assert_eq!(
            root.record(record.clone()).await,
            Ok(record.clone()),
            "{len}"
        );
        if len >= 4096 {
            assert!(client_log.written_from(record.data.as_ptr(), len), "{len}");
            let at = *seen.0.lock().unwrap().last().unwrap();
            assert!(server_log.read_around(at, len), "{len}");
        }
    }
}

/// Byte fields of enum variants.
#[pb::copyable]
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Whole(Bytes),
    Part {
        at: u64,
        data: Bytes,
        sealed: Box<[u8]>,
    },
}

#[test]
fn byte_fields_of_enum_variants_round_trip() {
    for chunk in [
        Chunk::Whole(Bytes::from(vec![2u8; 10])),
        Chunk::Part {
            at: 3,
            data: Bytes::from(vec![3u8; 5000]),
            sealed: vec![4u8; 5].into_boxed_slice(),
        },
    ] {
        let bytes = pb::codec::encode(&chunk, None).unwrap().0;
        assert_eq!(pb::codec::decode::<Chunk>(&bytes, vec![]).unwrap(), chunk);
    }
}

/// Someone else's type named `Bytes`: a copyable field of it takes serde's encoding.
mod other {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Bytes(pub Vec<u16>);
}

#[test]
fn copyable_byte_fields_have_the_bytes_serde_gives_them_and_box_is_one_byte_string() {
    #[pb::copyable]
    #[derive(Debug, Clone, PartialEq)]
    struct Fast {
        data: bytes::Bytes,
        sealed: Box<[u8]>,
        theirs: other::Bytes,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Slow {
        data: Bytes,
        sealed: Box<[u8]>,
        theirs: other::Bytes,
    }
    let fast = Fast {
        data: Bytes::from(vec![1u8; 5000]),
        sealed: vec![2u8; 300].into_boxed_slice(),
        theirs: other::Bytes(vec![3, 4]),
    };
    let slow = Slow {
        data: fast.data.clone(),
        sealed: fast.sealed.clone(),
        theirs: fast.theirs.clone(),
    };
    let bytes = pb::codec::encode(&fast, None).unwrap().0;
    assert_eq!(bytes, pb::codec::encode(&slow, None).unwrap().0);
    let back: Fast = pb::codec::decode(&bytes, vec![]).unwrap();
    assert_eq!(back, fast);
    // The depth guard counts a sequence as one level and a byte string as none: `Box<[u8]>`
    // alone in a value decodes under one level fewer as the copyable's field.
    #[pb::copyable]
    struct FastBox {
        sealed: Box<[u8]>,
    }
    #[derive(Serialize, Deserialize)]
    struct SlowBox {
        sealed: Box<[u8]>,
    }
    let bytes = pb::codec::encode(
        &SlowBox {
            sealed: vec![1u8; 3].into_boxed_slice(),
        },
        None,
    )
    .unwrap()
    .0;
    let fewest = |decodes: &dyn Fn(usize) -> bool| (0..8).find(|d| decodes(*d)).unwrap();
    let fast = fewest(&|d| pb::codec::decode_with_depth::<FastBox>(&bytes, vec![], d).is_ok());
    let slow = fewest(&|d| pb::codec::decode_with_depth::<SlowBox>(&bytes, vec![], d).is_ok());
    assert_eq!(fast + 1, slow, "the copyable's field is one byte string");
}

#[tokio::test]
async fn borrowed_parameters_are_the_owned_types_on_the_wire() {
    let seen = Seen::default();
    let (_server, client, _, _) = recorded_pair(seen).await;
    // A dynamic call with owned arguments reaches the method that borrows them: the same
    // signature, and the same bytes.
    let root: pb::ObjectRef = client.root();
    let data = vec![5u8; 300];
    let answer = root
        .call::<(String, Vec<u8>), (u64, String), ()>("borrowed", &("tag".into(), data))
        .await;
    assert_eq!(answer, Ok((1500, "tag".to_owned())));
    // And the stub's encoding of `&[u8]` is that of `Vec<u8>`, byte for byte.
    let data: Vec<u8> = (0..300).map(|i| i as u8).collect();
    let (a, _) = pb::codec::encode(&(pb::__private::SliceRef(&data),), None).unwrap();
    let (b, _) = pb::codec::encode(&(data,), None).unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn a_large_trailing_vec_is_read_into_its_own_allocation_and_handed_over_as_it_is() {
    // With split frames (the default), a `Vec<u8>` argument of 64 KiB and more that ends the
    // arguments is read from the socket into the allocation the callee gets.
    for features in [
        pb::Config::default().features,
        pb::proto::handshake::Features::NONE,
    ] {
        let seen = Seen::default();
        let config = pb::Config {
            features,
            ..pb::Config::default()
        };
        let (_server, client, server_log, _) = recorded_pair_with(seen.clone(), config).await;
        let root: SendsRef = client.root();
        let split = features.contains(pb::proto::handshake::Features::TAILS);
        for len in [100_000usize, 1 << 20] {
            let vec: Vec<u8> = (0..len).map(|i| (i * 5) as u8).collect();
            assert_eq!(root.echo_vec(vec.clone()).await.unwrap(), vec, "{len}");
            // (Only the positive case can be seen: an allocation may reuse the address of a
            // buffer read into earlier.)
            if split {
                let at = *seen.0.lock().unwrap().last().unwrap();
                assert!(server_log.read_into(at, len), "{len}");
            }
        }
        // Under the least tail, the string is read with its frame.
        let small: Vec<u8> = vec![3u8; pb::proto::frame::MIN_TAIL - 1];
        assert_eq!(root.echo_vec(small.clone()).await.unwrap(), small);
    }
}

#[tokio::test]
async fn large_byte_strings_are_sent_from_where_they_are_and_let_go_once_written() {
    let seen = Seen::default();
    let (_server, client, server_log, client_log) = recorded_pair(seen.clone()).await;
    let root: SendsRef = client.root();
    for len in [4096, 70_000, 1 << 20] {
        // `Bytes`: the caller's buffer goes out as it is; the callee answers with the slice of
        // its received frame, which goes out as it is too.
        let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
        assert_eq!(root.echo(data.clone()).await, Ok(data.clone()), "{len}");
        assert!(client_log.written_from(data.as_ptr(), len), "{len}");
        let at = *seen.0.lock().unwrap().last().unwrap();
        assert!(server_log.written_from(at as *const u8, len), "{len}");

        // An owned `Vec<u8>` or `Box<[u8]>` goes out from its own allocation, both ways.
        let vec: Vec<u8> = (0..len).map(|i| (i * 3) as u8).collect();
        let at = vec.as_ptr();
        assert_eq!(root.echo_vec(vec.clone()).await.unwrap(), vec);
        assert!(!client_log.written_from(at, len), "the clone was sent");
        let vec_at = vec.as_ptr();
        let back = root.echo_vec(vec).await.unwrap();
        assert!(client_log.written_from(vec_at, len), "{len}");
        let at = *seen.0.lock().unwrap().last().unwrap();
        assert!(server_log.written_from(at as *const u8, len), "{len}");
        let boxed = back.into_boxed_slice();
        let boxed_at = boxed.as_ptr();
        let want = boxed.clone();
        assert_eq!(root.echo_boxed(boxed).await.unwrap(), want);
        assert!(client_log.written_from(boxed_at, len), "{len}");
    }
}

#[tokio::test]
async fn shared_byte_strings_inside_a_value_keep_their_place() {
    // Two strings in a struct, with bytes before, between and after them: each large one goes
    // out uncopied, in its place.
    let seen = Seen::default();
    let (_server, client, server_log, client_log) = recorded_pair(seen.clone()).await;
    let root: SendsRef = client.root();
    for (la, lb) in [
        (5000, 7000),
        (4096, 300),
        (300, 1 << 20),
        (0, 4096),
        (10, 20),
    ] {
        let a = Bytes::from(vec![1u8; la]);
        let b = Bytes::from(vec![2u8; lb]);
        let pair = root.pair(a.clone(), b.clone()).await.unwrap();
        assert_eq!((&pair.a, &pair.b), (&a, &b), "{la} {lb}");
        let (at_a, at_b) = {
            let seen = seen.0.lock().unwrap();
            (seen[seen.len() - 2], seen[seen.len() - 1])
        };
        for (sent, len, at) in [(&a, la, at_a), (&b, lb, at_b)] {
            // `sent` is alive: its address cannot have been reused for another write.
            let large = len >= 4096;
            assert_eq!(client_log.written_from(sent.as_ptr(), len), large);
            if large {
                assert!(server_log.written_from(at as *const u8, len), "{la} {lb}");
            }
        }
    }
}

/// A byte string sent shared, as pb's byte-string paths send one, and decoded by a visitor of
/// its own (as `serde_bytes` decodes one), which knows nothing of split frames.
#[derive(Debug, PartialEq)]
pub struct Foreign(Bytes);

impl Serialize for Foreign {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        pb::zero_copy::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Foreign {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Foreign, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Foreign;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Foreign, E> {
                Ok(Foreign(Bytes::copy_from_slice(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[pb::remote]
trait Foreigner {
    async fn take(&self, n: u32, v: Foreign) -> Result<(u32, Foreign), ()>;
}

struct ForeignerImpl;

impl Foreigner for ForeignerImpl {
    async fn take(&self, n: u32, v: Foreign) -> Result<(u32, Foreign), ()> {
        Ok((n, v))
    }
}

#[tokio::test]
async fn a_tail_that_no_pb_decoder_takes_is_put_back_in_its_place() {
    // The frames go split both ways (the strings end the arguments and the answer), and the
    // decoders on both sides read an empty string where the tail goes: the payload is put
    // together again and decoded whole.
    let (_server, client) = common::memory_pair(ForeignerRef::new(ForeignerImpl)).await;
    let root: ForeignerRef = client.root();
    for len in [10, 70_000, 1 << 20] {
        let data = Bytes::from((0..len).map(|i| (i * 11) as u8).collect::<Vec<u8>>());
        let (n, back) = root.take(9, Foreign(data.clone())).await.unwrap();
        assert_eq!((n, back), (9, Foreign(data)), "{len}");
    }
}

/// Forwards every call, as it came, to an object on another connection.
struct Forward(pb::ObjectRef);

impl pb::dispatch::Dispatch for Forward {
    fn interface(&self) -> &'static pb::dispatch::Interface {
        <SendsRef as pb::Remote>::INTERFACE
    }

    fn dispatch(
        self: std::sync::Arc<Self>,
        call: pb::dispatch::IncomingCall,
    ) -> pb::dispatch::BoxFuture<pb::dispatch::Reply> {
        self.0.dispatch(call)
    }
}

#[tokio::test]
async fn split_calls_and_answers_are_forwarded_whole() {
    // client -> proxy -> server: the proxy's connections both read split frames; what it
    // forwards it puts together first (the raw call and its answer are single buffers).
    let (_server, proxy_side) = common::memory_pair(SendsRef::new(Seen::default())).await;
    let proxy = Forward(proxy_side.root_ref());
    let (_proxy, client) = common::memory_pair(pb::ObjectRef::local(proxy)).await;
    let root: SendsRef = client.root();
    for len in [10usize, 100_000, 1 << 20] {
        let vec: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        assert_eq!(root.echo_vec(vec.clone()).await.unwrap(), vec, "{len}");
        let text: String = "xé".chars().cycle().take(len / 3).collect();
        assert_eq!(root.echo_string(text.clone()).await.unwrap(), text, "{len}");
    }
    // A raw call through the proxy gets the answer's bytes in one buffer.
    let big = Bytes::from(vec![4u8; 100_000]);
    let (args, refs) = pb::codec::encode(&(big.clone(),), None).unwrap();
    let outcome = client
        .root_ref()
        .call_raw("echo", args, refs)
        .await
        .unwrap();
    assert!(outcome.ok);
    let back: Bytes = pb::dispatch::decode_outcome::<Bytes, ()>(outcome).unwrap();
    assert_eq!(back, big);
}

// ---------------------------------------------------------------------------------------------
// A split frame's tail: kept by a call whose arguments were read, and only ever the string the
// head's marker stands for.

#[pb::remote]
pub trait Tails {
    async fn first(&self, a: Vec<u8>, n: u32, s: String) -> (Vec<u8>, u32, String);
}

struct TheTails;

impl Tails for TheTails {
    async fn first(&self, a: Vec<u8>, n: u32, s: String) -> (Vec<u8>, u32, String) {
        (a, n, s)
    }
}

/// A wrapper that looks at a call's arguments before passing the call on, as an auditing or
/// authorizing wrapper does (`ObjectRef::dispatch`: "Useful for objects that wrap others").
struct Audit {
    inner: pb::ObjectRef,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, usize)>>>,
}

impl pb::dispatch::Dispatch for Audit {
    fn interface(&self) -> &'static pb::dispatch::Interface {
        <TailsRef as pb::Remote>::INTERFACE
    }

    fn dispatch(
        self: std::sync::Arc<Self>,
        mut call: pb::dispatch::IncomingCall,
    ) -> pb::dispatch::BoxFuture<pb::dispatch::Reply> {
        if call.method() == "first" {
            // Look at the arguments (how much data, and the number), then pass the call on.
            let (data, n, _text): (Vec<u8>, u32, String) =
                call.decode_args().expect("the arguments decode");
            self.seen.lock().unwrap().push((n, data.len()));
        }
        self.inner.dispatch(call)
    }
}

async fn through_the_wrapper(inner: pb::ObjectRef) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let audit = Audit {
        inner,
        seen: seen.clone(),
    };
    let (_server, client) = common::memory_pair(pb::ObjectRef::local(audit)).await;
    let root: TailsRef = client.root();
    for n in [10usize, 4096, 65_535, 65_536, 100_000] {
        let t = "t".repeat(n);
        let got = root.first(vec![1], 7, t.clone()).await.unwrap();
        assert_eq!(seen.lock().unwrap().last(), Some(&(7, 1)));
        assert!(
            got.2 == t,
            "sent a string of {n} bytes through the wrapper; the method received {} bytes: {:?}",
            got.2.len(),
            &got.2[..got.2.len().min(16)]
        );
    }
}

/// A wrapper that reads a call's arguments, then passes the call on, passes it whole: a last
/// argument of 64 KiB or more (a split frame's tail) included.
#[tokio::test]
async fn a_call_looked_at_before_it_is_passed_to_a_local_object_keeps_its_large_last_argument() {
    through_the_wrapper(TailsRef::new(TheTails).into()).await;
}

#[tokio::test]
async fn a_call_looked_at_before_it_is_passed_to_a_remote_object_keeps_its_large_last_argument() {
    let (_backend, to_backend) = common::memory_pair(TailsRef::new(TheTails)).await;
    through_the_wrapper(to_backend.root_ref()).await;
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The body of a call to the root's `method` with request id `id` and the encoded `args`.
fn call_body(id: u64, method: &str, args: &[u8]) -> Vec<u8> {
    let mut body = vec![1, 1];
    varint(id, &mut body);
    varint(0, &mut body);
    varint(method.len() as u64, &mut body);
    body.extend_from_slice(method.as_bytes());
    varint(0, &mut body);
    body.extend_from_slice(args);
    body
}

/// The payload of the answer read from `io` to call `id`.
async fn answer_payload(io: &mut (impl tokio::io::AsyncRead + Unpin), id: u64) -> (bool, Bytes) {
    for _ in 0..16 {
        let body = common::read_body(io).await.unwrap();
        let msg =
            pb::proto::message::Message::decode(Bytes::from(body), &Default::default()).unwrap();
        if let pb::proto::message::Message::Answer {
            id: got,
            ok,
            payload,
            ..
        } = msg
            && got == id
        {
            return (ok, payload);
        }
    }
    panic!("no answer to call {id}");
}

/// A peer's split frame whose head's other values read into the tail marker's bytes (a sender
/// never splits so) means what the same frame unsplit means: the tail is the string the
/// marker stands for, or the frame is read whole.
#[tokio::test]
async fn a_split_frame_means_what_the_same_frame_unsplit_means() {
    use pb::proto::frame::{SPLIT_FLAG, TAIL_MARKER, put_string_len};
    use tokio::io::AsyncWriteExt;
    let (a, mut peer) = pb::transport::memory_pair();
    // A peer that offers split frames (the hello a pb peer sends by default).
    peer.write_all(&common::SERVER_HELLO).await.unwrap();
    let server = pb::Connection::establish(
        a,
        &pb::Config::default(),
        pb::Side::Server,
        Some(TailsRef::new(TheTails).into()),
        None,
    )
    .await
    .unwrap();
    let _ = common::read_hello_frame(&mut peer).await;

    // `first(a: Vec<u8>, n: u32, s: String)`: the arguments' head is `a` = [1 byte], then
    // the tail marker; the tail is 10 bytes.
    let head_args = [&[1u8][..], &TAIL_MARKER].concat();
    let tail: Vec<u8> = [&[42u8, 8][..], b"abcdefgh"].concat();
    let body = call_body(1, "first", &head_args);
    let mut split = (SPLIT_FLAG | (body.len() + tail.len()) as u32)
        .to_be_bytes()
        .to_vec();
    split.extend_from_slice(&(tail.len() as u32).to_be_bytes());
    split.extend_from_slice(&body);
    split.extend_from_slice(&tail);
    peer.write_all(&split).await.unwrap();
    let (ok, as_split) = answer_payload(&mut peer, 1).await;
    assert!(ok);
    let as_split: (Vec<u8>, u32, String) = pb::codec::decode(&as_split, vec![]).unwrap();

    // The same frame unsplit (pb_proto::frame: "The frame means what the same frame unsplit
    // means (the head without the marker, the string's length prefix, the tail)").
    let mut args = vec![1u8];
    put_string_len(&mut args, tail.len());
    args.extend_from_slice(&tail);
    let body = call_body(2, "first", &args);
    let mut whole = (body.len() as u32).to_be_bytes().to_vec();
    whole.extend_from_slice(&body);
    peer.write_all(&whole).await.unwrap();
    let (ok, as_whole) = answer_payload(&mut peer, 2).await;
    assert!(ok);
    let as_whole: (Vec<u8>, u32, String) = pb::codec::decode(&as_whole, vec![]).unwrap();

    assert_eq!(
        as_split, as_whole,
        "one call, split or not, ran with different arguments"
    );
    drop(server);
}
