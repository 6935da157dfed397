#[pb::remote]
trait Greeter {
    async fn borrowed(&self, name: &str) -> Result<(), ()>;
    async fn pattern(&self, (a, b): (u8, u8)) -> Result<(), ()>;
    async fn generic<T>(&self, t: T) -> Result<(), ()>;
}

fn main() {}
