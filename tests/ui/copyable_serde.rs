#[pb::copyable]
#[serde(untagged)]
enum Id {
    Num(u64),
    Name(String),
}

#[pb::copyable]
#[serde(tag = "kind")]
enum Shape {
    Circle { r: u32 },
}

#[pb::copyable]
struct Profile {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    nickname: Option<String>,
}

#[pb::copyable]
struct Inner {
    x: u32,
}

#[pb::copyable]
struct Outer {
    #[serde(flatten)]
    inner: Inner,
}

#[derive(serde::Serialize, serde::Deserialize, pb::Copyable)]
#[serde(untagged)]
enum Derived {
    Num(u64),
}

fn main() {}
