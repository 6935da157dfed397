#[pb::remote]
trait Greeter {
    async fn greet(&self, name: String) -> String;
    async fn nothing(&self);
}

fn main() {}
