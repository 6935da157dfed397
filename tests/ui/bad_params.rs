#[pb::remote]
trait Greeter {
    async fn borrowed(&self, names: &Vec<String>) -> Result<(), ()>;
    async fn mutable(&self, data: &mut [u8]) -> Result<(), ()>;
    async fn named(&self, name: &'static str) -> Result<(), ()>;
    async fn pattern(&self, (a, b): (u8, u8)) -> Result<(), ()>;
    async fn generic<T>(&self, t: T) -> Result<(), ()>;
    async fn nested(&self, prefix: Option<&str>) -> Result<(), ()>;
}

fn main() {}
