fn main() {
    eprintln!("shiftserve: under construction");
    std::process::exit(2);
}
