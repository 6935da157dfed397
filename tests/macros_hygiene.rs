//! Generated code uses absolute paths only: it compiles without the implicit prelude and with
//! no direct dependency on serde.
#![no_implicit_prelude]

#[::pb::copyable]
#[derive(Debug, PartialEq)]
pub struct Item {
    pub name: ::std::string::String,
}

#[::pb::remote]
pub trait Shelf {
    async fn put(&self, item: Item) -> ::core::result::Result<u32, ::std::string::String>;
    async fn who(&self, caller: ::pb::Caller) -> ::core::result::Result<bool, ()>;
}

struct S;

impl Shelf for S {
    async fn put(&self, item: Item) -> ::core::result::Result<u32, ::std::string::String> {
        ::core::result::Result::Ok(item.name.len() as u32)
    }
    async fn who(&self, caller: ::pb::Caller) -> ::core::result::Result<bool, ()> {
        ::core::result::Result::Ok(caller.connection().is_none())
    }
}

#[::core::prelude::v1::test]
fn generated_code_needs_no_prelude() {
    let rt = ::tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let shelf = ShelfRef::new(S);
        let name = ::std::borrow::ToOwned::to_owned("abc");
        let n = shelf.put(Item { name }).await;
        ::std::assert_eq!(n, ::core::result::Result::Ok(3));
        ::std::assert_eq!(shelf.who().await, ::core::result::Result::Ok(true));
    });
}
