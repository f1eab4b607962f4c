fn main() {
    let _ = seedlog_node::server::now_ms();
}
