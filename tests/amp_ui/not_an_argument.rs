struct Opaque;

#[derive(pb::AmpCommand)]
struct Sum {
    a: Opaque,
}

fn main() {}
