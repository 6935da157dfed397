#[pb::remote]
trait Generic<T> {
    async fn get(&self) -> Result<(), ()>;
}

#[pb::remote]
trait WithItems {
    type Out;
    const N: usize;
    async fn get(&self) -> Result<(), ()> {
        Ok(())
    }
}

#[pb::remote(extra)]
trait WithArgs {
    async fn get(&self) -> Result<(), ()>;
}

#[pb::remote]
struct NotATrait;

fn main() {}
