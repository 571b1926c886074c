//! OCSF 1.8.0 conformance of `recorder --format ocsf` lines, checked against the schema's own
//! definitions of the classes and objects they use (`data/ocsf-1.8.0.txt`, which says where
//! each comes from): every attribute the class or object requires is there (those of a
//! profile only when the line declares it), every attribute present is one the schema
//! defines, of its type, with a value its enumeration allows, objects meet their
//! constraints, and `type_uid` and `category_uid` agree with the class.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// The OCSF release the table encodes.
pub const VERSION: &str = "1.8.0";

const TABLE: &str = include_str!("../data/ocsf-1.8.0.txt");

#[derive(Debug)]
enum Type {
    Integer,
    Long,
    String,
    Boolean,
    Float,
    Json,
    Object(String),
}

#[derive(Debug)]
struct Attribute {
    kind: Type,
    array: bool,
    required: bool,
    /// The profiles it belongs to; empty when it belongs to the class or object itself.
    profiles: Vec<String>,
    /// The values an enumerated id may take.
    values: Option<Vec<i64>>,
}

/// A class or an object.
#[derive(Debug, Default)]
struct Item {
    name: String,
    category: u64,
    attributes: BTreeMap<String, Attribute>,
    at_least_one: Vec<String>,
    just_one: Vec<String>,
}

/// The classes (by uid) and objects (by name) of the table.
pub struct Schema {
    classes: HashMap<u64, Item>,
    objects: HashMap<String, Item>,
}

fn parse_attribute(line: &str) -> (String, Attribute) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [name, kind, requirement, rest @ ..] = words.as_slice() else {
        panic!("a short attribute line: {line:?}")
    };
    let (kind, array) = kind
        .strip_suffix("[]")
        .map_or((*kind, false), |k| (k, true));
    let kind = match kind {
        "integer_t" => Type::Integer,
        "long_t" => Type::Long,
        "string_t" => Type::String,
        "boolean_t" => Type::Boolean,
        "float_t" => Type::Float,
        "json_t" => Type::Json,
        other => Type::Object(
            other
                .strip_prefix("object:")
                .unwrap_or_else(|| panic!("type {other:?} in {line:?}"))
                .to_owned(),
        ),
    };
    let required = match *requirement {
        "required" => true,
        "recommended" | "optional" => false,
        other => panic!("requirement {other:?} in {line:?}"),
    };
    let mut attribute = Attribute {
        kind,
        array,
        required,
        profiles: Vec::new(),
        values: None,
    };
    for word in rest {
        if let Some(profiles) = word.strip_prefix('@') {
            attribute.profiles = profiles.split(',').map(str::to_owned).collect();
        } else if let Some(values) = word.strip_prefix('=') {
            attribute.values = Some(values.split(',').map(|v| v.parse().unwrap()).collect());
        } else {
            panic!("{word:?} in {line:?}");
        }
    }
    ((*name).to_owned(), attribute)
}

impl Schema {
    #[must_use]
    pub fn load() -> Self {
        let mut classes = HashMap::new();
        let mut objects = HashMap::new();
        let mut current: Option<(Option<u64>, Item)> = None;
        let mut finish = |current: Option<(Option<u64>, Item)>| match current {
            Some((Some(uid), item)) => drop(classes.insert(uid, item)),
            Some((None, item)) => drop(objects.insert(item.name.clone(), item)),
            None => {}
        };
        for line in TABLE.lines().filter(|l| !l.starts_with('#')) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first() {
                Some(&"class") => {
                    finish(current.take());
                    let item = Item {
                        name: words[1].to_owned(),
                        category: words[3].parse().unwrap(),
                        ..Item::default()
                    };
                    current = Some((Some(words[2].parse().unwrap()), item));
                }
                Some(&"object") => {
                    finish(current.take());
                    let mut item = Item {
                        name: words[1].to_owned(),
                        ..Item::default()
                    };
                    for constraint in &words[2..] {
                        let (kind, names) = constraint.split_once('=').unwrap();
                        let names = names.split(',').map(str::to_owned).collect();
                        match kind {
                            "at_least_one" => item.at_least_one = names,
                            "just_one" => item.just_one = names,
                            other => panic!("constraint {other:?} in {line:?}"),
                        }
                    }
                    current = Some((None, item));
                }
                Some(_) => {
                    let (name, attribute) = parse_attribute(line);
                    let (_, item) = current.as_mut().expect("an attribute inside an item");
                    item.attributes.insert(name, attribute);
                }
                None => {}
            }
        }
        finish(current);
        Self { classes, objects }
    }

    /// The name of the class `uid`, when the table has it.
    #[must_use]
    pub fn class_name(&self, uid: u64) -> Option<&str> {
        self.classes.get(&uid).map(|c| c.name.as_str())
    }

    /// Every way `line` departs from the schema; empty when it conforms.
    #[must_use]
    pub fn check(&self, line: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        let uid = line["class_uid"].as_u64();
        let Some(class) = uid.and_then(|uid| self.classes.get(&uid)) else {
            return vec![format!(
                "class_uid {} is not in the table",
                line["class_uid"]
            )];
        };
        let profiles: Vec<&str> = line["metadata"]["profiles"]
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if line["metadata"]["version"] != VERSION {
            errors.push(format!(
                "metadata.version is {}, not {VERSION}",
                line["metadata"]["version"]
            ));
        }
        if line["category_uid"].as_u64() != Some(class.category) {
            errors.push(format!(
                "category_uid {} is not {}'s {}",
                line["category_uid"], class.name, class.category
            ));
        }
        let type_uid = uid
            .zip(line["activity_id"].as_u64())
            .map(|(c, a)| c * 100 + a);
        if line["type_uid"].as_u64() != type_uid {
            errors.push(format!(
                "type_uid {} is not class_uid * 100 + activity_id",
                line["type_uid"]
            ));
        }
        self.check_item(class, line, &class.name, &profiles, &mut errors);
        errors
    }

    fn check_item(
        &self,
        item: &Item,
        value: &Value,
        path: &str,
        profiles: &[&str],
        errors: &mut Vec<String>,
    ) {
        let Some(members) = value.as_object() else {
            errors.push(format!("{path} is {value}, not an object"));
            return;
        };
        let applies = |a: &Attribute| {
            a.profiles.is_empty() || a.profiles.iter().any(|p| profiles.contains(&p.as_str()))
        };
        for (name, attribute) in &item.attributes {
            if attribute.required && applies(attribute) && !members.contains_key(name) {
                errors.push(format!("{path}.{name}: required by {}", item.name));
            }
        }
        for (name, v) in members {
            let at = format!("{path}.{name}");
            let Some(attribute) = item.attributes.get(name) else {
                errors.push(format!("{at}: {} defines no such attribute", item.name));
                continue;
            };
            if !applies(attribute) {
                errors.push(format!(
                    "{at}: belongs to profile {:?}, which metadata.profiles does not name",
                    attribute.profiles
                ));
            }
            match (attribute.array, v) {
                (true, Value::Array(items)) => {
                    for (i, v) in items.iter().enumerate() {
                        self.check_value(attribute, v, &format!("{at}[{i}]"), profiles, errors);
                    }
                }
                (true, _) => errors.push(format!("{at}: {v} is not an array")),
                (false, v) => self.check_value(attribute, v, &at, profiles, errors),
            }
        }
        let present = |names: &[String]| names.iter().filter(|n| members.contains_key(*n)).count();
        if !item.at_least_one.is_empty() && present(&item.at_least_one) == 0 {
            errors.push(format!(
                "{path}: {} needs at least one of {:?}",
                item.name, item.at_least_one
            ));
        }
        if !item.just_one.is_empty() && present(&item.just_one) != 1 {
            errors.push(format!(
                "{path}: {} needs exactly one of {:?}",
                item.name, item.just_one
            ));
        }
    }

    fn check_value(
        &self,
        attribute: &Attribute,
        v: &Value,
        at: &str,
        profiles: &[&str],
        errors: &mut Vec<String>,
    ) {
        let ok = match &attribute.kind {
            // OCSF's integer is 32 bits; its long, 64.
            Type::Integer => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            Type::Long => v.as_i64().is_some(),
            Type::String => v.is_string(),
            Type::Boolean => v.is_boolean(),
            Type::Float => v.is_number(),
            Type::Json => !v.is_null(),
            // Free-form: `unmapped`, extended attributes.
            Type::Object(name) if name == "object" => v.is_object(),
            Type::Object(name) => {
                match self.objects.get(name) {
                    Some(object) => self.check_item(object, v, at, profiles, errors),
                    None => errors.push(format!(
                        "{at}: object {name} is not in the table (add it from the schema)"
                    )),
                }
                true
            }
        };
        if !ok {
            errors.push(format!("{at}: {v} is not of type {:?}", attribute.kind));
        }
        if let (Some(values), Some(n)) = (&attribute.values, v.as_i64())
            && !values.contains(&n)
        {
            errors.push(format!("{at}: {n} is not one of {values:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A change that breaks a conforming line.
    type Change = fn(&mut Value);

    /// The checker itself catches what it is for: a missing required attribute, one the
    /// schema does not define, a wrong type, a value out of an enumeration, a profile's
    /// attribute without the profile, an object's unmet constraint.
    #[test]
    fn the_checker_finds_each_kind_of_departure() {
        let schema = Schema::load();
        assert_eq!(schema.class_name(1007), Some("process_activity"));
        let good = json!({
            "class_uid": 1007, "category_uid": 1, "activity_id": 1, "type_uid": 100_701,
            "severity_id": 1, "time": 1, "metadata": {"version": "1.8.0",
            "product": {"name": "recorder"}, "profiles": ["linux/linux_users"]},
            "actor": {"process": {"pid": 1}}, "device": {"uid": "h", "type_id": 0},
            "process": {"pid": 2, "auid": 1000},
        });
        assert_eq!(schema.check(&good), Vec::<String>::new());
        let broken = |change: fn(&mut Value)| {
            let mut line = good.clone();
            change(&mut line);
            schema.check(&line)
        };
        let cases: [(Change, &str); 8] = [
            (
                |l| drop(l.as_object_mut().unwrap().remove("device")),
                "process_activity.device: required",
            ),
            (|l| l["proces"] = json!({}), "defines no such attribute"),
            (
                |l| l["process"]["pid"] = json!("2"),
                "is not of type Integer",
            ),
            (
                |l| l["process"]["pid"] = json!(3_000_000_000_u32),
                "is not of type Integer",
            ),
            (|l| l["activity_id"] = json!(6), "is not one of"),
            (
                |l| l["metadata"]["profiles"] = json!([]),
                "belongs to profile",
            ),
            (|l| l["actor"] = json!({}), "needs at least one of"),
            (|l| l["type_uid"] = json!(100_702), "type_uid"),
        ];
        for (change, expected) in cases {
            let errors = broken(change);
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{expected:?} not in {errors:?}"
            );
        }
    }
}
