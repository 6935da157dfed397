//! A cacheable scoreboard shared by several clients: `cargo run --example observer`.
//!
//! The server owns a `Cache<Scoreboard>`; each client asks for it and receives a `Replica`, a
//! copy the server keeps up to date. Clients report goals through an ordinary call, the server
//! updates its cache, and every replica follows. When a client drops its replica, the server
//! learns it and stops sending it updates.

use pb::{Cache, CacheState, Replica};

#[pb::copyable]
#[derive(Debug, Clone, Default)]
pub struct Scoreboard {
    pub home: u32,
    pub away: u32,
    pub last: Option<String>,
}

#[pb::copyable]
#[derive(Debug, Clone)]
pub struct Goal {
    pub team: Team,
    pub scorer: String,
}

#[pb::copyable]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Team {
    Home,
    Away,
}

impl CacheState for Scoreboard {
    type Update = Goal;
    fn apply(&mut self, goal: &Goal) {
        match goal.team {
            Team::Home => self.home += 1,
            Team::Away => self.away += 1,
        }
        self.last = Some(goal.scorer.clone());
    }
}

#[pb::remote]
pub trait Stadium {
    async fn scoreboard(&self) -> Result<Replica<Scoreboard>, ()>;
    async fn goal(&self, team: Team, scorer: String) -> Result<u64, ()>;
}

struct StadiumImpl {
    board: Cache<Scoreboard>,
}

impl Stadium for StadiumImpl {
    async fn scoreboard(&self) -> Result<Replica<Scoreboard>, ()> {
        Ok(self.board.replica())
    }
    async fn goal(&self, team: Team, scorer: String) -> Result<u64, ()> {
        self.board.update(Goal { team, scorer }).map_err(|_| ())
    }
}

fn show(who: &str, b: &Scoreboard) {
    println!(
        "  [{who}] home {} - {} away{}",
        b.home,
        b.away,
        b.last
            .as_ref()
            .map(|s| format!(" (last: {s})"))
            .unwrap_or_default()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let board = Cache::new(Scoreboard::default());
    let server = pb::Server::bind("127.0.0.1:0")
        .await?
        .serve(StadiumRef::new(StadiumImpl {
            board: board.clone(),
        }));
    println!("stadium open on {}", server.local_addr());

    let mut fans = Vec::new();
    for name in ["ana", "ben", "cai"] {
        let conn = pb::Client::connect(server.local_addr()).await?;
        let stadium: StadiumRef = conn.root();
        let replica = stadium.scoreboard().await?;
        fans.push((name, conn, stadium, replica));
    }
    println!(
        "{} fans watching (the server sees {} observers)",
        fans.len(),
        board.observers()
    );

    let goals = [
        (0, Team::Home, "Okafor"),
        (1, Team::Away, "Lindqvist"),
        (2, Team::Home, "Okafor"),
    ];
    for (n, (fan, team, scorer)) in goals.into_iter().enumerate() {
        let (name, _, stadium, _) = &fans[fan];
        let version = stadium.goal(team, scorer.to_string()).await?;
        println!("{name} reports a goal by {scorer} ({team:?}), version {version}");
        for (who, _, _, replica) in &fans {
            let b = replica
                .wait_for(|b| b.home + b.away == n as u32 + 1)
                .await?;
            show(who, &b);
        }
    }

    // One fan leaves: dropping the replica releases it, and the server stops updating them.
    let (name, conn, _, replica) = fans.remove(2);
    drop(replica);
    let left = board.wait_for_observers(|n| n == 2).await;
    println!("{name} stops watching; the server now updates {left} observers");
    conn.close().await;

    board.update(Goal {
        team: Team::Away,
        scorer: "Mbeki".into(),
    })?;
    println!("the server records a goal by Mbeki itself");
    for (who, _, _, replica) in &fans {
        let b = replica.wait_for(|b| b.away == 2).await?;
        show(who, &b);
    }

    for (_, conn, _, _) in fans {
        conn.close().await;
    }
    server.shutdown().await;
    println!("final score: {:?}", board.get());
    Ok(())
}
