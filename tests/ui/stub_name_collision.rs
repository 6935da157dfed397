#[pb::remote]
trait Collides {
    async fn new(&self) -> Result<(), ()>;
    async fn object_ref(&self) -> Result<(), ()>;
    async fn clone(&self) -> Result<(), ()>;
    async fn try_into(&self) -> Result<(), ()>;
    async fn fine(&self) -> Result<(), ()>;
}

#[pb::remote(crate = ::pb, extra)]
trait BadArgs {
    async fn get(&self) -> Result<(), ()>;
}

fn main() {}
