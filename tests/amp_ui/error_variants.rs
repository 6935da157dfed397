#[derive(pb::AmpError, Debug)]
enum Failure {
    NoCode,
    #[amp(code = "A")]
    First(String),
    #[amp(code = "A")]
    Again(String),
    #[amp(code = "B")]
    Named { why: String },
    #[amp(code = "C")]
    Two(String, String),
}

fn main() {}
