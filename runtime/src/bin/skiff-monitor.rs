//! `skiff-monitor`: the per-container monitor of skiff. See `runtime::monitor`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(runtime::monitor::server::main(args));
}
