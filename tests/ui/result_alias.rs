pub type Result<T> = std::result::Result<T, String>;

#[pb::remote]
trait Store {
    async fn get(&self, key: String) -> Result<u32>;
}

fn main() {}
