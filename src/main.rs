fn main() {
    println!("roomcast {}", env!("CARGO_PKG_VERSION"));
}
