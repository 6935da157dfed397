#[derive(pb::AmpFields)]
struct Reply {
    #[amp(name = "total")]
    a: i64,
    total: i64,
}

fn main() {}
