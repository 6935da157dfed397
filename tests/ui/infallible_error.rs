use std::convert::Infallible;

#[pb::remote]
trait Greeter {
    async fn greet(&self, name: String) -> Result<String, Infallible>;
}

fn main() {}
