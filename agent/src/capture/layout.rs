//! Resolves [`KernelLayout`] from the running kernel's BTF: every offset the probes use comes
//! from here, and each is checked against the size the probe reads.

use std::path::Path;

use agent_common::layout::{ABSENT, FieldSpec, KernelLayout};
use btf_rs::{Btf, Type};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Read { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no struct {ty} (needed for {field})")]
    NoStruct {
        ty: &'static str,
        field: &'static str,
    },
    #[error("struct {ty} has no member {path} in this kernel's BTF (needed for {field})")]
    NoMember {
        ty: &'static str,
        path: &'static str,
        field: &'static str,
    },
    #[error("{ty}.{path} is {actual} bytes in this kernel, the probe reads {expected}")]
    Size {
        ty: &'static str,
        path: &'static str,
        actual: usize,
        expected: u32,
    },
    #[error("BTF lookup failed for {field}: {source}")]
    Btf {
        field: &'static str,
        source: btf_rs::Error,
    },
}

/// Reads `/sys/kernel/btf/vmlinux` (or `path`) and resolves every field the probes read.
pub fn resolve(path: &Path) -> Result<KernelLayout, LayoutError> {
    let btf = Btf::from_file(path).map_err(|source| LayoutError::Read {
        path: path.display().to_string(),
        source,
    })?;
    KernelLayout::resolve(|spec| field_offset(&btf, spec))
}

fn field_offset(btf: &Btf, spec: &FieldSpec) -> Result<u32, LayoutError> {
    let (ty, optional) = match spec.ty.strip_prefix('?') {
        Some(ty) => (ty, true),
        None => (spec.ty, false),
    };
    let (offset_bits, member_type) = match locate(btf, ty, spec) {
        Ok(found) => found,
        Err(LayoutError::NoStruct { .. } | LayoutError::NoMember { .. }) if optional => {
            return Ok(ABSENT);
        }
        Err(e) => return Err(e),
    };
    if spec.size != 0 {
        let actual = size_of_type(btf, member_type).map_err(|source| LayoutError::Btf {
            field: spec.name,
            source,
        })?;
        if actual != spec.size as usize {
            return Err(LayoutError::Size {
                ty,
                path: spec.path,
                actual,
                expected: spec.size,
            });
        }
    }
    Ok(offset_bits / 8)
}

/// The bit offset in struct `ty` of the first of `spec.path`'s alternatives it has, and the
/// member's type.
fn locate(btf: &Btf, ty: &'static str, spec: &FieldSpec) -> Result<(u32, Type), LayoutError> {
    let field = spec.name;
    let btf_err = |source| LayoutError::Btf { field, source };
    let no_member = || LayoutError::NoMember {
        ty,
        path: spec.path,
        field,
    };
    let root = btf
        .resolve_types_by_name(ty)
        .map_err(|_| LayoutError::NoStruct { ty, field })?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or(LayoutError::NoStruct { ty, field })?;

    spec.path
        .split('|')
        .map(|path| member_path(btf, &root, path))
        .find_map(Result::transpose)
        .transpose()
        .map_err(btf_err)?
        .ok_or_else(no_member)
}

/// The bit offset and type of the member at dotted `path` under `root`, if it has one.
fn member_path(
    btf: &Btf,
    root: &btf_rs::Struct,
    path: &str,
) -> Result<Option<(u32, Type)>, btf_rs::Error> {
    let mut current = root.clone();
    let mut offset_bits = 0u32;
    let mut member_type = None;
    for name in path.split('.') {
        let Some((bits, ty)) = find_member(btf, &current, name)? else {
            return Ok(None);
        };
        offset_bits += bits;
        if let Type::Struct(s) | Type::Union(s) = strip(btf, ty.clone())? {
            current = s;
        }
        member_type = Some(ty);
    }
    Ok(member_type.map(|ty| (offset_bits, ty)))
}

/// Finds `name` among the members of `s`, looking inside anonymous structs and unions (the
/// kernel wraps many fields in them, for example under `__randomize_layout`). Returns the
/// bit offset relative to `s` and the member's type.
fn find_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    name: &str,
) -> Result<Option<(u32, Type)>, btf_rs::Error> {
    for member in &s.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let ty = btf.resolve_chained_type(member)?;
        if member_name == name {
            return Ok(Some((member.bit_offset(), ty)));
        }
        if member_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = strip(btf, ty)?
            && let Some((bits, found)) = find_member(btf, &inner, name)?
        {
            return Ok(Some((member.bit_offset() + bits, found)));
        }
    }
    Ok(None)
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type, btf_rs::Error> {
    loop {
        match ty {
            Type::Typedef(_)
            | Type::Volatile(_)
            | Type::Const(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                let next = ty.as_btf_type().expect("qualifiers are BTF types");
                ty = btf.resolve_chained_type(next)?;
            }
            other => return Ok(other),
        }
    }
}

fn size_of_type(btf: &Btf, ty: Type) -> Result<usize, btf_rs::Error> {
    Ok(match strip(btf, ty)? {
        Type::Int(i) => i.size(),
        Type::Ptr(_) => 8,
        Type::Struct(s) | Type::Union(s) => s.size(),
        Type::Enum(e) => e.size(),
        Type::Enum64(e) => e.size(),
        Type::Array(a) => {
            let len = a.len();
            len * size_of_type(btf, btf.resolve_chained_type(&a)?)?
        }
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel: every field the probes read must resolve.
    #[test]
    fn resolves_every_field_on_this_kernel() {
        let layout = resolve(Path::new(VMLINUX_BTF)).expect("layout resolves");
        assert_ne!(
            layout.task_tgid, layout.task_pid,
            "pid and tgid are distinct fields"
        );
        assert!(layout.task_loginuid > 0 && layout.mm_arg_end > layout.mm_arg_start);
        assert_eq!(
            layout.sys_enter_args, 16,
            "args follow the common header and nr"
        );
    }

    #[test]
    fn missing_member_is_a_clear_error() {
        let btf = Btf::from_file(VMLINUX_BTF).expect("vmlinux BTF");
        let spec = FieldSpec {
            name: "bogus",
            ty: "task_struct",
            path: "no_such_field",
            size: 4,
        };
        let err = field_offset(&btf, &spec).unwrap_err();
        assert!(err.to_string().contains("no member no_such_field"), "{err}");
        let spec = FieldSpec {
            name: "bogus",
            ty: "task_struct",
            path: "pid",
            size: 8,
        };
        assert!(matches!(
            field_offset(&btf, &spec),
            Err(LayoutError::Size { actual: 4, .. })
        ));
    }

    /// Alternatives are tried in order: the first this kernel has is used, past those it
    /// lacks; none at all is the missing-member error, naming every alternative.
    #[test]
    fn alternatives_take_the_first_member_the_kernel_has() {
        let btf = Btf::from_file(VMLINUX_BTF).expect("vmlinux BTF");
        let spec = |path| FieldSpec {
            name: "probe",
            ty: "task_struct",
            path,
            size: 4,
        };
        let pid = field_offset(&btf, &spec("pid")).unwrap();
        let tgid = field_offset(&btf, &spec("tgid")).unwrap();
        assert_eq!(
            field_offset(&btf, &spec("no_such_field|pid|tgid")).unwrap(),
            pid
        );
        assert_eq!(field_offset(&btf, &spec("tgid|pid")).unwrap(), tgid);
        let err = field_offset(&btf, &spec("no_such|nor_this")).unwrap_err();
        assert!(
            err.to_string().contains("no member no_such|nor_this"),
            "{err}"
        );
    }

    /// An optional field the kernel lacks is `ABSENT`; one it has resolves, and is
    /// size-checked like any other.
    #[test]
    fn optional_fields() {
        let btf = Btf::from_file(VMLINUX_BTF).expect("vmlinux BTF");
        let spec = |ty, path, size| FieldSpec {
            name: "probe",
            ty,
            path,
            size,
        };
        for (ty, path) in [
            ("?no_such_struct", "pid"),
            ("?task_struct", "no_such_field"),
        ] {
            assert_eq!(field_offset(&btf, &spec(ty, path, 4)).unwrap(), ABSENT);
        }
        let pid = field_offset(&btf, &spec("task_struct", "pid", 4)).unwrap();
        assert_eq!(
            field_offset(&btf, &spec("?task_struct", "pid", 4)).unwrap(),
            pid
        );
        assert!(matches!(
            field_offset(&btf, &spec("?task_struct", "pid", 8)),
            Err(LayoutError::Size { actual: 4, .. })
        ));
    }
}
