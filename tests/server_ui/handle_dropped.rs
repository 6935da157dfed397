// A server whose handle is dropped at once stops accepting: the compiler says so.
#![deny(unused_must_use)]

async fn serve(root: pb::ObjectRef) -> std::io::Result<()> {
    pb::Server::bind("127.0.0.1:0").await?.serve(root);
    Ok(())
}

async fn node() -> std::io::Result<()> {
    pb::Node::builder().bind("127.0.0.1:0").await?;
    Ok(())
}

fn main() {
    let _ = (serve, node);
}
