//! Edit instructions, composed captions and the toy vocabulary.

use crate::rng::Rng;

use super::scene::{cell_name, cell_phrase, join_list, Background, Colour, Edit, Object, Scene, Shape, Size};

/// The shortest description of `obj` that no object of `others` also matches:
/// "the circle", "the red circle", "the small circle", "the small red circle", or, failing those,
/// "the small red circle in the top left" (see [`cell_phrase`]). `None` if even that is ambiguous.
pub fn refer(obj: &Object, others: &[Object]) -> Option<String> {
    // (mention colour, mention size), from the shortest description to the longest.
    for (colour, size) in [(false, false), (true, false), (false, true), (true, true)] {
        let clash = others.iter().any(|o| {
            o.shape == obj.shape && (!colour || o.colour == obj.colour) && (!size || o.size == obj.size)
        });
        if !clash {
            let mut text = String::from("the ");
            if size {
                text.push_str(obj.size.word());
                text.push(' ');
            }
            if colour {
                text.push_str(obj.colour.word());
                text.push(' ');
            }
            text.push_str(obj.shape.word());
            return Some(text);
        }
    }
    let same = |o: &Object| {
        o.shape == obj.shape && o.size == obj.size && o.colour == obj.colour && o.cell == obj.cell
    };
    if others.iter().any(same) {
        return None;
    }
    Some(format!(
        "the {} {} {} {}",
        obj.size,
        obj.colour,
        obj.shape,
        cell_phrase(obj.cell)
    ))
}

/// The other objects that a reference to `obj` must not match: those of the reference scene and of
/// the current scene, except `obj` itself.
pub(crate) fn distractors(obj: &Object, reference: &Scene, current: &Scene) -> Vec<Object> {
    reference
        .objects
        .iter()
        .chain(&current.objects)
        .filter(|o| *o != obj)
        .copied()
        .collect()
}

/// An instruction for `edit` on `current` (objects are referred to unambiguously with respect to
/// both `reference` and `current`). `None` if an object cannot be referred to unambiguously.
pub fn instruction(rng: &mut Rng, edit: &Edit, reference: &Scene, current: &Scene) -> Option<String> {
    let the = |cell: u8| -> Option<String> {
        let obj = current.at(cell)?;
        refer(obj, &distractors(obj, reference, current))
    };
    let pick = |rng: &mut Rng, options: &[String]| options.get(rng.below(options.len())).cloned();
    match *edit {
        Edit::Recolour { cell, to } => {
            let r = the(cell)?;
            pick(
                rng,
                &[
                    format!("make {r} {to}"),
                    format!("change the colour of {r} to {to}"),
                    format!("turn {r} {to}"),
                    format!("paint {r} {to}"),
                ],
            )
        }
        Edit::Reshape { cell, to } => {
            let r = the(cell)?;
            pick(
                rng,
                &[
                    format!("turn {r} into a {to}"),
                    format!("change {r} into a {to}"),
                    format!("make {r} a {to}"),
                ],
            )
        }
        Edit::Resize { cell, to } => {
            let r = the(cell)?;
            let (adj, verb) = match to {
                Size::Large => ("larger", "enlarge"),
                Size::Small => ("smaller", "shrink"),
            };
            pick(
                rng,
                &[
                    format!("make {r} {adj}"),
                    format!("make {r} {to}"),
                    format!("{verb} {r}"),
                ],
            )
        }
        Edit::Move { from, to } => {
            let r = the(from)?;
            pick(
                rng,
                &[
                    format!("move {r} to the {}", cell_name(to)),
                    format!("put {r} {}", cell_phrase(to)),
                ],
            )
        }
        Edit::Add { object } => {
            let what = object.caption();
            pick(rng, &[format!("add {what}"), format!("place {what}")])
        }
        Edit::Remove { cell } => {
            let r = the(cell)?;
            pick(
                rng,
                &[
                    format!("remove {r}"),
                    format!("delete {r}"),
                    format!("take away {r}"),
                    format!("get rid of {r}"),
                ],
            )
        }
        Edit::Background { to } => pick(
            rng,
            &[
                format!("make the background {to}"),
                format!("change the background to {to}"),
            ],
        ),
    }
}

/// Joins instructions into one CIRR-like caption: "a and b", "a, then b", "a, b and c".
pub fn compose(rng: &mut Rng, parts: &[String]) -> String {
    if parts.len() == 2 && rng.bernoulli(0.3) {
        return format!("{}, then {}", parts[0], parts[1]);
    }
    join_list(parts)
}

/// Every word the toy generator can emit, plus punctuation.
pub fn words() -> Vec<String> {
    let mut w: Vec<String> = [
        "a",
        "an",
        "the",
        "and",
        "then",
        "in",
        "on",
        "at",
        "of",
        "to",
        "into",
        "with",
        "make",
        "change",
        "colour",
        "turn",
        "paint",
        "larger",
        "smaller",
        "enlarge",
        "shrink",
        "move",
        "put",
        "add",
        "place",
        "remove",
        "delete",
        "take",
        "away",
        "get",
        "rid",
        "background",
        "top",
        "bottom",
        "left",
        "right",
        "centre",
        ",",
        ".",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.extend(Shape::ALL.iter().map(|s| s.word().to_string()));
    w.extend(Colour::ALL.iter().map(|s| s.word().to_string()));
    w.extend(Size::ALL.iter().map(|s| s.word().to_string()));
    w.extend(Background::ALL.iter().map(|s| s.word().to_string()));
    let mut seen = std::collections::HashSet::new();
    w.retain(|x| seen.insert(x.clone()));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(cell: u8, shape: Shape, colour: Colour, size: Size) -> Object {
        Object {
            cell,
            shape,
            colour,
            size,
        }
    }

    #[test]
    fn shortest_unambiguous_reference() {
        let a = obj(0, Shape::Circle, Colour::Red, Size::Large);
        let b = obj(1, Shape::Circle, Colour::Blue, Size::Large);
        let c = obj(2, Shape::Circle, Colour::Red, Size::Small);
        let d = obj(3, Shape::Square, Colour::Red, Size::Large);
        assert_eq!(refer(&d, &[a, b, c]).unwrap(), "the square");
        assert_eq!(refer(&b, &[a, c, d]).unwrap(), "the blue circle");
        assert_eq!(refer(&a, &[b, c, d]).unwrap(), "the large red circle");
        let a2 = obj(5, Shape::Circle, Colour::Red, Size::Large);
        assert_eq!(refer(&a, &[a2]).unwrap(), "the large red circle in the top left");
        assert_eq!(refer(&a2, &[a]).unwrap(), "the large red circle on the right");
        assert!(refer(&a, &[a]).is_none());
    }

    #[test]
    fn instructions() {
        let s = Scene::new(
            Background::Grey,
            vec![
                obj(0, Shape::Circle, Colour::Red, Size::Large),
                obj(4, Shape::Square, Colour::Blue, Size::Small),
            ],
        );
        let mut rng = Rng::new(1);
        let e = Edit::Recolour {
            cell: 0,
            to: Colour::Blue,
        };
        let text = instruction(&mut rng, &e, &s, &s).unwrap();
        assert!(text.contains("the circle") && text.contains("blue"), "{text}");
        let text = instruction(&mut rng, &Edit::Remove { cell: 4 }, &s, &s).unwrap();
        assert!(text.ends_with("the square"), "{text}");
        assert_eq!(
            compose(&mut rng, &["x".into(), "y".into(), "z".into()]),
            "x, y and z"
        );
    }
}
