//! The message types the agent knows: the shipped standard definitions plus the map's own
//! directories, resolved into trees the decoder walks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parse::{parse_msg, Arity, BaseType, MessageDef, Primitive};

include!(concat!(env!("OUT_DIR"), "/shipped_interfaces.rs"));

/// A resolved message type.
#[derive(Debug, PartialEq)]
pub struct MsgType {
    /// `package/Name`.
    pub name: String,
    pub fields: Vec<Field>,
}

#[derive(Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub element: Element,
    pub arity: Arity,
}

#[derive(Debug, PartialEq)]
pub enum Element {
    Primitive(Primitive),
    Message(Arc<MsgType>),
}

/// A definition that cannot be loaded or resolved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{origin}: {reason}")]
    Definition { origin: String, reason: String },
    #[error("message type `{0}` is not known (shipped: builtin_interfaces, std_msgs, geometry_msgs, sensor_msgs, nav_msgs; add a directory of .msg files with `msg_dirs`)")]
    Unknown(String),
    #[error("message type `{0}` contains itself")]
    Recursive(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parsed definitions by `package/Name`, with where each came from.
#[derive(Debug, Default)]
pub struct Registry {
    defs: BTreeMap<String, (MessageDef, String)>,
}

impl Registry {
    /// The shipped standard definitions.
    pub fn shipped() -> Self {
        let mut registry = Registry::default();
        for (name, text) in SHIPPED {
            let package = name.split('/').next().unwrap_or_default();
            let def = parse_msg(package, text).unwrap_or_else(|e| {
                // Shipped files are tested (see the tests below): this cannot happen in a build.
                panic!("shipped definition {name} is invalid: {e}")
            });
            registry
                .defs
                .insert((*name).to_string(), (def, format!("shipped {name}.msg")));
        }
        registry
    }

    /// Adds every `PKG/msg/NAME.msg` below `dir` (a ROS-style share directory). A definition
    /// given here replaces a shipped one of the same name.
    pub fn add_dir(&mut self, dir: &Path) -> Result<usize, RegistryError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| RegistryError::Io { path, source }
        };
        let mut added = 0;
        let mut packages: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("msg").is_dir())
            .collect();
        packages.sort();
        for package_dir in packages {
            let package = package_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let msg_dir = package_dir.join("msg");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&msg_dir)
                .map_err(io(&msg_dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("msg"))
                .collect();
            files.sort();
            for file in files {
                let text = std::fs::read_to_string(&file).map_err(io(&file))?;
                let origin = file.display().to_string();
                let def = parse_msg(&package, &text).map_err(|e| RegistryError::Definition {
                    origin: origin.clone(),
                    reason: e.to_string(),
                })?;
                let name = file
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.defs.insert(format!("{package}/{name}"), (def, origin));
                added += 1;
            }
        }
        Ok(added)
    }

    /// Every known `package/Name` (the tests list the shipped set).
    #[cfg(test)]
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.defs.keys().map(String::as_str)
    }

    /// Resolves `pkg/msg/Name` (or `pkg/Name`) into a tree of fields.
    pub fn resolve(&self, type_name: &str) -> Result<Arc<MsgType>, RegistryError> {
        let key = normalize(type_name).ok_or_else(|| RegistryError::Unknown(type_name.into()))?;
        self.resolve_key(&key, &mut Vec::new())
    }

    fn resolve_key(
        &self,
        key: &str,
        stack: &mut Vec<String>,
    ) -> Result<Arc<MsgType>, RegistryError> {
        if stack.iter().any(|s| s == key) {
            return Err(RegistryError::Recursive(key.to_string()));
        }
        let (def, origin) = self
            .defs
            .get(key)
            .ok_or_else(|| RegistryError::Unknown(key.to_string()))?;
        stack.push(key.to_string());
        let mut fields = Vec::with_capacity(def.fields.len());
        for field in &def.fields {
            let element = match &field.base {
                BaseType::Primitive(p) => Element::Primitive(*p),
                BaseType::Message(inner) => {
                    Element::Message(self.resolve_key(inner, stack).map_err(|e| match e {
                        RegistryError::Unknown(name) => RegistryError::Definition {
                            origin: origin.clone(),
                            reason: format!(
                                "field `{}` has type `{name}`, which is not known",
                                field.name
                            ),
                        },
                        other => other,
                    })?)
                }
            };
            fields.push(Field {
                name: field.name.clone(),
                element,
                arity: field.arity,
            });
        }
        stack.pop();
        Ok(Arc::new(MsgType {
            name: key.to_string(),
            fields,
        }))
    }
}

/// `pkg/msg/Name` or `pkg/Name` → `pkg/Name`.
pub fn normalize(type_name: &str) -> Option<String> {
    match type_name.split('/').collect::<Vec<_>>().as_slice() {
        [pkg, "msg", name] | [pkg, name] if !pkg.is_empty() && !name.is_empty() => {
            Some(format!("{pkg}/{name}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_definition_resolves() {
        let registry = Registry::shipped();
        let names: Vec<String> = registry.names().map(str::to_string).collect();
        assert!(names.len() >= 80, "{}", names.len());
        for name in names {
            registry
                .resolve(&name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let imu = registry.resolve("sensor_msgs/msg/Imu").unwrap();
        assert_eq!(imu.fields.len(), 7);
        assert!(matches!(
            registry.resolve("nope/msg/X"),
            Err(RegistryError::Unknown(_))
        ));
    }

    #[test]
    fn a_map_directory_adds_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let msg = dir.path().join("robot_msgs/msg");
        std::fs::create_dir_all(&msg).unwrap();
        std::fs::write(
            msg.join("Wheel.msg"),
            "std_msgs/Header header\nfloat32[4] rpm\n",
        )
        .unwrap();
        let mut registry = Registry::shipped();
        assert_eq!(registry.add_dir(dir.path()).unwrap(), 1);
        assert_eq!(
            registry
                .resolve("robot_msgs/msg/Wheel")
                .unwrap()
                .fields
                .len(),
            2
        );

        std::fs::write(msg.join("Loop.msg"), "Loop next\n").unwrap();
        std::fs::write(msg.join("Bad.msg"), "int32 ok\nUnknownThing x\n").unwrap();
        let mut registry = Registry::shipped();
        registry.add_dir(dir.path()).unwrap();
        assert!(matches!(
            registry.resolve("robot_msgs/Loop"),
            Err(RegistryError::Recursive(_))
        ));
        let e = registry.resolve("robot_msgs/Bad").unwrap_err().to_string();
        assert!(e.contains("Bad.msg") && e.contains("`x`"), "{e}");
    }
}
