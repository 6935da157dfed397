pub struct Opaque;

#[pb::remote]
trait Store {
    async fn put(&self, value: Opaque) -> Result<(), ()>;
}

fn main() {}
