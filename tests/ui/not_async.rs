#[pb::remote]
trait Greeter {
    fn greet(&self, name: String) -> Result<String, ()>;
}

fn main() {}
