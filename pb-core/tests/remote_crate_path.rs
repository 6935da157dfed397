//! `#[pb_derive::remote(crate = path)]`: generated code names pb through the given path, so
//! pb's own crates (which cannot name `::pb`) can declare remote interfaces.

#[pb_derive::remote(crate = ::pb_core)]
pub trait Adder {
    async fn add(&self, a: i64, b: i64) -> Result<i64, ()>;
}

struct Plain;

impl Adder for Plain {
    async fn add(&self, a: i64, b: i64) -> Result<i64, ()> {
        Ok(a + b)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_interface_declared_with_a_crate_path_serves_and_calls() {
    let (a, b) = pb_core::transport::memory_pair();
    let config = pb_core::Config::default();
    let root = AdderRef::new(Plain);
    let server = pb_core::Connection::establish(
        a,
        &config,
        pb_core::Side::Server,
        Some(root.object_ref().clone()),
        None,
    );
    let client = pb_core::Connection::establish(b, &config, pb_core::Side::Client, None, None);
    let (_server, client) = tokio::try_join!(server, client).unwrap();
    let remote: AdderRef = client.root();
    assert_eq!(remote.add(40, 2).await.unwrap(), 42);
    // The same stub calls a local object without a connection.
    assert_eq!(root.add(1, 2).await.unwrap(), 3);
}
