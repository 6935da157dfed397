#[derive(pb::AmpCommand)]
#[amp(nmae = "Sum")]
struct Sum {
    #[amp(rename = "x")]
    a: i64,
    #[amp(name = "")]
    b: i64,
    #[amp(name = "_ask")]
    c: i64,
}

fn main() {}
