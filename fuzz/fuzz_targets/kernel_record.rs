//! Ring-buffer records as the agent reads them from the kernel: the input is cut into records of
//! `size_of::<RawEvent>()` bytes (the remainder is one short record, which must be refused with a
//! size error), each is decoded, and the decoded events drive the write tracking the way
//! `KernelSource::hints` does (opens, closes, dups, close_range, exits). Any panic, or an
//! out-of-bounds read in the unsafe decoder (the targets build with AddressSanitizer), is a crash.
#![no_main]

use certreload::monitor::ebpf::{
    decode::{decode, DecodeError, Operation},
    writers::OpenWriters,
};
use certreload_common::RawEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let size = size_of::<RawEvent>();
    let mut writers = OpenWriters::default();
    let mut chunks = data.chunks_exact(size);
    for record in &mut chunks {
        let Ok(ev) = decode(record) else { continue };
        let writer = ev.header.writer;
        let tgid = writer.tgid;
        match ev.op {
            // `still_open = false`: the target must not depend on this machine's /proc.
            Operation::OpenWrite { name, fd } => writers.opened(tgid, fd, name, writer, false),
            Operation::Close { fd } => drop(writers.closed(tgid, fd)),
            Operation::Dup { old, new } => drop(writers.duplicated(tgid, old, new)),
            Operation::CloseRange { first, last } => drop(writers.closed_range(tgid, first, last)),
            Operation::Exit => {
                writers.exited(tgid);
            }
            _ => {}
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        assert_eq!(
            decode(rest).err(),
            Some(DecodeError::Size {
                got: rest.len(),
                expected: size
            }),
            "a short record must be refused by its size"
        );
    }
});
