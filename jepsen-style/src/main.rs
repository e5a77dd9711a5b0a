//! jepsen-style: placeholder entry point, replaced by the fault harness.
fn main() {
    println!("jepsen-style: not built yet");
}
