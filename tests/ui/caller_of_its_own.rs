//! A type of the application's own named `Caller`, written alone, is taken for `pb::Caller`:
//! the error says so, at the parameter, and how to pass it.

#[pb::copyable]
#[derive(Debug, Clone)]
pub struct Caller {
    pub number: String,
}

#[pb::remote]
pub trait Switchboard {
    async fn ring(&self, who: Caller) -> String;
}

fn main() {}
