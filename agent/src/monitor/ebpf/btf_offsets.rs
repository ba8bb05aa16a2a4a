//! Struct member offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), for the VFS
//! hooks: an fexit on `vfs_rename` reads `rd->old_dentry->d_name.name`, and where those members sit
//! changes between kernels (`struct renamedata` gained and renamed fields from 6.0 to 6.12). The
//! programs are compiled without CO-RE relocations (rustc emits none), so the agent resolves the
//! offsets here at load and hands them to the programs in a map: nothing is a fixed offset.
//!
//! Only what offsets need is parsed: the header, the type section (to walk every type by id) and
//! the string section. Format: the kernel's Documentation/bpf/btf.rst.

use thiserror::Error;

/// Why an offset could not be resolved.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum BtfOffsetError {
    /// Not a BTF blob, or one cut short.
    #[error("not BTF data: {0}")]
    Malformed(&'static str),
    /// A type kind this parser does not know (a newer kernel): its size cannot be skipped.
    #[error("BTF type #{id} has unknown kind {kind}")]
    UnknownKind {
        /// Type id.
        id: u32,
        /// The kind number.
        kind: u32,
    },
    /// No struct of that name.
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    /// The struct has no such member (also not inside its anonymous structs/unions).
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
    },
    /// The member is a bit field: the programs read whole bytes.
    #[error("{strukt}.{member} is a bit field")]
    BitField {
        /// Struct name.
        strukt: String,
        /// Member name.
        member: String,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// A parsed view of a BTF blob: the offset of each type record, by id (id 0 is `void`).
pub(crate) struct KernelBtf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Start of each type's record in `types`; index = type id - 1.
    records: Vec<usize>,
}

/// One `struct btf_type`: name, info word (kind, vlen, kind_flag) and size/type.
struct TypeRecord {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Offset of the first byte after the 12-byte header in `types`.
    body: usize,
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, BtfOffsetError> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfOffsetError::Malformed("a record runs past the end"))
}

impl<'a> KernelBtf<'a> {
    /// Parses the header and indexes every type (little-endian BTF, what x86_64 kernels expose).
    pub(crate) fn parse(blob: &'a [u8]) -> Result<Self, BtfOffsetError> {
        let magic = blob
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfOffsetError::Malformed("shorter than its header"))?;
        if magic != MAGIC {
            return Err(BtfOffsetError::Malformed(
                "wrong magic (not little-endian BTF)",
            ));
        }
        let field = |i: usize| u32_at(blob, 4 + 4 * i).map(|v| v as usize);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let section = |off: usize, len: usize| {
            blob.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfOffsetError::Malformed("a section runs past the end"))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let mut records = Vec::new();
        let mut at = 0;
        while at < types.len() {
            records.push(at);
            let id = u32::try_from(records.len()).unwrap_or(u32::MAX);
            let record = record_at(types, at)?;
            at = record.body + body_len(id, &record)?;
        }
        Ok(KernelBtf {
            types,
            strings,
            records,
        })
    }

    /// Byte offset of `member` in `struct strukt`, looking into anonymous structs and unions.
    pub(crate) fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfOffsetError> {
        let id = self
            .struct_id(strukt)?
            .ok_or_else(|| BtfOffsetError::NoStruct(strukt.to_owned()))?;
        match self.find_member(id, member, 0, strukt)? {
            Some(bits) => Ok(bits / 8),
            None => Err(BtfOffsetError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            }),
        }
    }

    fn record(&self, id: u32) -> Result<TypeRecord, BtfOffsetError> {
        let at = *id
            .checked_sub(1)
            .and_then(|i| self.records.get(i as usize))
            .ok_or(BtfOffsetError::Malformed(
                "a member names a type id out of range",
            ))?;
        record_at(self.types, at)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// The first struct (not a forward declaration) named `name`.
    fn struct_id(&self, name: &str) -> Result<Option<u32>, BtfOffsetError> {
        for id in 1..=self.records.len() as u32 {
            let record = self.record(id)?;
            if record.kind == KIND_STRUCT && self.name(record.name_off) == name {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Bit offset of `member` within type `id` (a struct or union), `base` bits in.
    fn find_member(
        &self,
        id: u32,
        member: &str,
        base: u32,
        strukt: &str,
    ) -> Result<Option<u32>, BtfOffsetError> {
        let record = self.record(id)?;
        if record.kind != KIND_STRUCT && record.kind != KIND_UNION {
            return Ok(None);
        }
        for i in 0..record.vlen {
            let at = record.body + 12 * i;
            let (name_off, member_type, offset) = (
                u32_at(self.types, at)?,
                u32_at(self.types, at + 4)?,
                u32_at(self.types, at + 8)?,
            );
            let (bits, bitfield) = if record.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24 != 0)
            } else {
                (offset, false)
            };
            let name = self.name(name_off);
            if name == member {
                if bitfield || bits % 8 != 0 {
                    return Err(BtfOffsetError::BitField {
                        strukt: strukt.to_owned(),
                        member: member.to_owned(),
                    });
                }
                return Ok(Some(base + bits));
            }
            if name.is_empty() {
                let inner = self.resolve_modifiers(member_type)?;
                if let Some(found) = self.find_member(inner, member, base + bits, strukt)? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedef/volatile/const/restrict/type-tag to the type they qualify.
    fn resolve_modifiers(&self, mut id: u32) -> Result<u32, BtfOffsetError> {
        // typedef, volatile, const, restrict, type_tag: bounded, BTF has no cycles through them.
        for _ in 0..16 {
            if id == 0 {
                return Ok(0);
            }
            let record = self.record(id)?;
            if !matches!(record.kind, 8..=11 | 18) {
                return Ok(id);
            }
            id = u32_at(self.types, record.body - 4)?;
        }
        Ok(id)
    }
}

fn record_at(types: &[u8], at: usize) -> Result<TypeRecord, BtfOffsetError> {
    let name_off = u32_at(types, at)?;
    let info = u32_at(types, at + 4)?;
    Ok(TypeRecord {
        name_off,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        body: at + 12,
    })
}

/// Bytes after the 12-byte header for each kind (btf.rst, "Type Encoding").
fn body_len(id: u32, record: &TypeRecord) -> Result<usize, BtfOffsetError> {
    let vlen = record.vlen;
    Ok(match record.kind {
        // INT, VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: none.
        2 | 7..=12 | 16 | 18 => 0,
        // ARRAY: struct btf_array.
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64: 12 bytes per member/variable/value.
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO: 8 bytes per value/parameter.
        6 | 13 => 8 * vlen,
        kind => return Err(BtfOffsetError::UnknownKind { id, kind }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct qstr { u64 hash_len; const char *name; }` inside an anonymous
    /// union at offset 0 of `struct dentry { int pad; union { struct qstr d_name; }; }` (offsets
    /// in bits, as BTF stores them).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0qstr\0hash_len\0name\0dentry\0pad\0d_name\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            let at = strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("name in table");
            (at + 1) as u32
        };
        let mut types = Vec::new();
        let mut put = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (8 bytes), 2: ptr to 1
        put(&[s("int"), 1 << 24, 8, 64]);
        put(&[0, 2 << 24, 1]);
        // 3: struct qstr { hash_len @0, name @64 }
        put(&[s("qstr"), (4 << 24) | 2, 16]);
        put(&[s("hash_len"), 1, 0, s("name"), 2, 64]);
        // 4: anonymous union { struct qstr d_name @0 }
        put(&[0, (5 << 24) | 1, 16]);
        put(&[s("d_name"), 3, 0]);
        // 5: struct dentry { int pad @0; <anon union> @64 }
        put(&[s("dentry"), (4 << 24) | 2, 24]);
        put(&[s("pad"), 1, 0, 0, 4, 64]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_directly_and_inside_anonymous_unions() {
        let blob = blob();
        let btf = KernelBtf::parse(&blob).expect("parses");
        assert_eq!(btf.member_offset("qstr", "name"), Ok(8));
        assert_eq!(btf.member_offset("dentry", "d_name"), Ok(8));
        assert_eq!(btf.member_offset("dentry", "pad"), Ok(0));
        assert!(matches!(
            btf.member_offset("dentry", "d_inode"),
            Err(BtfOffsetError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("inode", "i_ino"),
            Err(BtfOffsetError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(KernelBtf::parse(b"\x7fELF").is_err());
        let mut blob = blob();
        blob.truncate(40);
        assert!(KernelBtf::parse(&blob).is_err());
    }

    /// The running kernel's own BTF (every kernel these tests run on has it): the members the
    /// rename hook reads exist, and `qstr.name` follows the 8-byte `hash_len` on 64-bit kernels.
    #[test]
    fn resolves_the_rename_hooks_members_on_the_running_kernel() {
        let Ok(blob) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("SKIP: no /sys/kernel/btf/vmlinux");
            return;
        };
        let btf = KernelBtf::parse(&blob).expect("the kernel's BTF parses");
        assert_eq!(btf.member_offset("qstr", "name"), Ok(8));
        let d_name = btf
            .member_offset("dentry", "d_name")
            .expect("dentry.d_name");
        let old = btf
            .member_offset("renamedata", "old_dentry")
            .expect("renamedata.old_dentry");
        let new = btf
            .member_offset("renamedata", "new_dentry")
            .expect("renamedata.new_dentry");
        assert!(
            d_name > 0 && old != new,
            "d_name {d_name}, old {old}, new {new}"
        );
    }
}
