#[pb::remote]
trait Greeter {
    async fn by_value(self) -> Result<(), ()>;
    async fn by_mut(&mut self) -> Result<(), ()>;
    async fn none() -> Result<(), ()>;
}

fn main() {}
