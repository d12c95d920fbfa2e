//! Prints what a weight file holds: `cargo run -p snnet-io --example inspect -- FILE...`

fn main() {
    let mut failed = false;
    for arg in std::env::args().skip(1) {
        match snnet_io::read_weights_file(std::path::Path::new(&arg)) {
            Ok(wf) => {
                println!("{arg}: {:?}, {} tensors", wf.format, wf.tensors.len());
                if let Some(e) = &wf.state_dict_entry {
                    println!("  state dict in entry '{e}'; other entries: {:?}", wf.other_entries);
                }
                for (k, t) in &wf.tensors {
                    println!("  {k}: {} {:?}", t.dtype, t.shape);
                }
            }
            Err(e) => {
                failed = true;
                println!("error: {e}");
            }
        }
    }
    std::process::exit(failed as i32);
}
