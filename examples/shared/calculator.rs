//! Twisted's AMP howto calculator, shared by the `amp_calculator_server`,
//! `amp_calculator_client` and `howto_amp` examples: the commands (Twisted's
//! `class Sum(amp.Command)`, `class Divide(amp.Command)`), their answers and errors, the
//! server's responders, and the `--port P` argument the two programs take.

#![allow(dead_code)]

#[derive(pb::AmpCommand)]
#[amp(response = SumResult)]
pub struct Sum {
    pub a: i64,
    pub b: i64,
}

#[derive(pb::AmpFields)]
pub struct SumResult {
    /// Wide enough for any sum of two `i64`s.
    pub total: i128,
}

#[derive(pb::AmpCommand)]
#[amp(response = DivideResult, errors = DivideError)]
pub struct Divide {
    pub numerator: i64,
    pub denominator: i64,
}

#[derive(pb::AmpFields)]
pub struct DivideResult {
    pub result: f64,
}

#[derive(pb::AmpError, Debug)]
pub enum DivideError {
    /// Twisted maps `ZeroDivisionError` to this code in the howto; the field carries the
    /// error's description.
    #[amp(code = "ZERO_DIVISION")]
    ZeroDivision(String),
}

/// Twisted's `class Math(amp.AMP)` with `Sum.responder(sum)` and `Divide.responder(divide)`:
/// what the server answers, printing each result as Twisted's howto server does.
pub fn math() -> pb::amp::Locator {
    pb::amp::Locator::new()
        .respond(|Sum { a, b }| async move {
            let total = i128::from(a) + i128::from(b);
            println!("Did a sum: {a} + {b} = {total}");
            Ok(SumResult { total })
        })
        .respond(
            |Divide {
                 numerator,
                 denominator,
             }| async move {
                if denominator == 0 {
                    return Err(DivideError::ZeroDivision("float division by zero".into()));
                }
                let result = numerator as f64 / denominator as f64;
                println!("Divided: {numerator} / {denominator} = {result}");
                Ok(DivideResult { result })
            },
        )
}

/// The `--port P` argument, the only one the examples take.
pub fn port_from_args(program: &str) -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = Some(value.parse().map_err(|_| format!("bad port {value:?}"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    port.ok_or_else(|| format!("usage: {program} --port PORT"))
}
