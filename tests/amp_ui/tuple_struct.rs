#[derive(pb::AmpCommand)]
struct Sum(i64, i64);

fn main() {}
