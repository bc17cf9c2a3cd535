//! Scenes (objects on a 3×3 grid over a background) and atomic edits.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rng::{mix64, Rng};

/// Side of the position grid: scenes have `GRID × GRID` cells, at most one object per cell.
pub const GRID: u8 = 3;
/// Number of cells.
pub const CELLS: u8 = GRID * GRID;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// All values, in index order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The word used in captions.
            pub fn word(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }

            /// Index in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }

            fn random(rng: &mut Rng) -> Self {
                Self::ALL[rng.below(Self::ALL.len())]
            }

            fn random_other(self, rng: &mut Rng) -> Self {
                let n = Self::ALL.len();
                Self::ALL[(self.index() + 1 + rng.below(n - 1)) % n]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.word())
            }
        }
    };
}

named_enum!(
    /// Object shape.
    Shape {
        /// A disc.
        Circle => "circle",
        /// An axis-aligned square.
        Square => "square",
        /// An upward triangle.
        Triangle => "triangle",
        /// A square rotated by 45°.
        Diamond => "diamond",
        /// A plus sign.
        Cross => "cross",
    }
);

named_enum!(
    /// Object colour.
    Colour {
        /// Red.
        Red => "red",
        /// Green.
        Green => "green",
        /// Blue.
        Blue => "blue",
        /// Yellow.
        Yellow => "yellow",
        /// Purple.
        Purple => "purple",
        /// Orange.
        Orange => "orange",
    }
);

named_enum!(
    /// Object size.
    Size {
        /// Small.
        Small => "small",
        /// Large.
        Large => "large",
    }
);

named_enum!(
    /// Background colour.
    Background {
        /// Mid grey.
        Grey => "grey",
        /// White.
        White => "white",
        /// Black.
        Black => "black",
    }
);

impl Colour {
    /// Nominal RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [235, 210, 40],
            Colour::Purple => [140, 60, 180],
            Colour::Orange => [245, 135, 30],
        }
    }
}

impl Background {
    /// Nominal RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Grey => [128, 128, 128],
            Background::White => [245, 245, 245],
            Background::Black => [15, 15, 15],
        }
    }
}

/// The name of a grid cell (row-major index), as used in captions: "top left", "centre", ...
pub fn cell_name(cell: u8) -> &'static str {
    const NAMES: [&str; 9] = [
        "top left",
        "top",
        "top right",
        "left",
        "centre",
        "right",
        "bottom left",
        "bottom",
        "bottom right",
    ];
    NAMES.get(usize::from(cell)).copied().unwrap_or("centre")
}

/// Where a cell is, as a prepositional phrase: "in the top left", "at the top", "on the left",
/// "in the centre", ...
pub fn cell_phrase(cell: u8) -> &'static str {
    const PHRASES: [&str; 9] = [
        "in the top left",
        "at the top",
        "in the top right",
        "on the left",
        "in the centre",
        "on the right",
        "in the bottom left",
        "at the bottom",
        "in the bottom right",
    ];
    PHRASES.get(usize::from(cell)).copied().unwrap_or("in the centre")
}

/// One object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Object {
    /// Grid cell (row-major, `0..CELLS`).
    pub cell: u8,
    /// Shape.
    pub shape: Shape,
    /// Colour.
    pub colour: Colour,
    /// Size.
    pub size: Size,
}

impl Object {
    /// "a large red circle in the top left".
    pub fn caption(&self) -> String {
        format!(
            "a {} {} {} {}",
            self.size,
            self.colour,
            self.shape,
            cell_phrase(self.cell)
        )
    }

    fn code(&self) -> u128 {
        // 1 presence bit + 3 shape + 3 colour + 1 size bits.
        1 | (self.shape.index() as u128) << 1
            | (self.colour.index() as u128) << 4
            | (self.size.index() as u128) << 7
    }
}

/// A scene: a background and 1–4 objects in distinct cells, kept sorted by cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scene {
    /// Background colour.
    pub background: Background,
    /// Objects, sorted by cell.
    pub objects: Vec<Object>,
}

impl Scene {
    /// A scene from parts (objects are sorted; later objects in an occupied cell are dropped).
    pub fn new(background: Background, mut objects: Vec<Object>) -> Self {
        objects.sort_by_key(|o| o.cell);
        objects.dedup_by_key(|o| o.cell);
        Self { background, objects }
    }

    /// A random scene with `min..=max` objects.
    pub fn random(rng: &mut Rng, min_objects: usize, max_objects: usize) -> Self {
        let n = rng.range_inclusive(min_objects.max(1), max_objects.min(usize::from(CELLS)));
        let mut cells: Vec<u8> = (0..CELLS).collect();
        rng.shuffle(&mut cells);
        let objects = cells
            .into_iter()
            .take(n)
            .map(|cell| Object {
                cell,
                shape: Shape::random(rng),
                colour: Colour::random(rng),
                size: Size::random(rng),
            })
            .collect();
        Self::new(Background::random(rng), objects)
    }

    /// A unique 128-bit key of the scene (its canonical description).
    pub fn key(&self) -> u128 {
        let mut k = self.background.index() as u128;
        for o in &self.objects {
            k |= o.code() << (2 + 8 * u32::from(o.cell));
        }
        k
    }

    /// A stable 64-bit hash of [`Self::key`].
    pub fn hash64(&self) -> u64 {
        let k = self.key();
        mix64(mix64(k as u64) ^ (k >> 64) as u64)
    }

    /// Per grid cell, `[shape, colour, size]` as class indices counted from 1, or `[0, 0, 0]`
    /// for an empty cell: dense labels for the toy stage-0 scene-parsing loss.
    pub fn cell_labels(&self) -> [[u8; 3]; CELLS as usize] {
        let mut out = [[0u8; 3]; CELLS as usize];
        for o in &self.objects {
            out[usize::from(o.cell)] = [
                o.shape.index() as u8 + 1,
                o.colour.index() as u8 + 1,
                o.size.index() as u8 + 1,
            ];
        }
        out
    }

    /// The object in `cell`.
    pub fn at(&self, cell: u8) -> Option<&Object> {
        self.objects.iter().find(|o| o.cell == cell)
    }

    /// Empty cells, in order.
    pub fn free_cells(&self) -> Vec<u8> {
        (0..CELLS).filter(|c| self.at(*c).is_none()).collect()
    }

    /// "a large red circle in the top left and a small blue square in the centre on a grey
    /// background".
    pub fn caption(&self) -> String {
        let parts: Vec<String> = self.objects.iter().map(Object::caption).collect();
        format!("{} on a {} background", join_list(&parts), self.background)
    }

    /// The scene after `edit`, or `None` if the edit does not apply (no object in the cell, an
    /// occupied destination, no change, ...).
    pub fn apply(&self, edit: &Edit) -> Option<Scene> {
        let mut objects = self.objects.clone();
        let mut background = self.background;
        let find = |objects: &mut Vec<Object>, cell: u8| objects.iter_mut().position(|o| o.cell == cell);
        match *edit {
            Edit::Recolour { cell, to } => {
                let i = find(&mut objects, cell)?;
                let o = objects.get_mut(i)?;
                if o.colour == to {
                    return None;
                }
                o.colour = to;
            }
            Edit::Reshape { cell, to } => {
                let i = find(&mut objects, cell)?;
                let o = objects.get_mut(i)?;
                if o.shape == to {
                    return None;
                }
                o.shape = to;
            }
            Edit::Resize { cell, to } => {
                let i = find(&mut objects, cell)?;
                let o = objects.get_mut(i)?;
                if o.size == to {
                    return None;
                }
                o.size = to;
            }
            Edit::Move { from, to } => {
                if from == to || to >= CELLS || self.at(to).is_some() {
                    return None;
                }
                let i = find(&mut objects, from)?;
                objects.get_mut(i)?.cell = to;
            }
            Edit::Add { object } => {
                if object.cell >= CELLS || self.at(object.cell).is_some() {
                    return None;
                }
                objects.push(object);
            }
            Edit::Remove { cell } => {
                let i = find(&mut objects, cell)?;
                objects.remove(i);
            }
            Edit::Background { to } => {
                if to == background {
                    return None;
                }
                background = to;
            }
        }
        Some(Scene::new(background, objects))
    }
}

/// "a", "a and b", "a, b and c".
pub(crate) fn join_list(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// An atomic edit: one detail of a scene changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Edit {
    /// The object in `cell` changes colour.
    Recolour {
        /// The object's cell.
        cell: u8,
        /// New colour.
        to: Colour,
    },
    /// The object in `cell` changes shape.
    Reshape {
        /// The object's cell.
        cell: u8,
        /// New shape.
        to: Shape,
    },
    /// The object in `cell` changes size.
    Resize {
        /// The object's cell.
        cell: u8,
        /// New size.
        to: Size,
    },
    /// The object in `from` moves to the empty cell `to`.
    Move {
        /// Current cell.
        from: u8,
        /// Destination cell (empty).
        to: u8,
    },
    /// A new object appears in an empty cell.
    Add {
        /// The new object.
        object: Object,
    },
    /// The object in `cell` disappears.
    Remove {
        /// The object's cell.
        cell: u8,
    },
    /// The background changes colour.
    Background {
        /// New background.
        to: Background,
    },
}

impl Edit {
    /// Every kind name of [`Edit::kind`], in declaration order.
    pub const KINDS: [&'static str; 7] = [
        "recolour",
        "reshape",
        "resize",
        "move",
        "add",
        "remove",
        "background",
    ];

    /// The kind of edit, as a lowercase name (`"recolour"`, `"move"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Edit::Recolour { .. } => "recolour",
            Edit::Reshape { .. } => "reshape",
            Edit::Resize { .. } => "resize",
            Edit::Move { .. } => "move",
            Edit::Add { .. } => "add",
            Edit::Remove { .. } => "remove",
            Edit::Background { .. } => "background",
        }
    }

    /// The cell whose object this edit leaves changed (the destination for moves); `None` for
    /// background edits.
    pub fn touched_cell(&self) -> Option<u8> {
        match *self {
            Edit::Recolour { cell, .. }
            | Edit::Reshape { cell, .. }
            | Edit::Resize { cell, .. }
            | Edit::Remove { cell } => Some(cell),
            Edit::Move { to, .. } => Some(to),
            Edit::Add { object } => Some(object.cell),
            Edit::Background { .. } => None,
        }
    }

    /// The cell of the existing object the edit refers to (the source for moves); `None` for adds
    /// and background edits.
    pub fn source_cell(&self) -> Option<u8> {
        match *self {
            Edit::Recolour { cell, .. }
            | Edit::Reshape { cell, .. }
            | Edit::Resize { cell, .. }
            | Edit::Remove { cell } => Some(cell),
            Edit::Move { from, .. } => Some(from),
            Edit::Add { .. } | Edit::Background { .. } => None,
        }
    }

    /// A random edit applicable to `scene`, not touching the cells in `locked`, keeping the object
    /// count within `min..=max`. `None` if nothing applies.
    pub fn random(
        rng: &mut Rng,
        scene: &Scene,
        locked: &[u8],
        min_objects: usize,
        max_objects: usize,
        allow_background: bool,
    ) -> Option<Edit> {
        let editable: Vec<Object> = scene
            .objects
            .iter()
            .filter(|o| !locked.contains(&o.cell))
            .copied()
            .collect();
        let free: Vec<u8> = scene
            .free_cells()
            .into_iter()
            .filter(|c| !locked.contains(c))
            .collect();
        let n = scene.objects.len();
        // Kinds with weights: recolour, reshape, resize, move, add, remove, background.
        let mut kinds: Vec<(u8, u32)> = Vec::with_capacity(7);
        if !editable.is_empty() {
            kinds.extend([(0, 10), (1, 10), (2, 10)]);
            if !free.is_empty() {
                kinds.push((3, 10));
            }
            if n > min_objects {
                kinds.push((5, 10));
            }
        }
        if !free.is_empty() && n < max_objects {
            kinds.push((4, 10));
        }
        if allow_background {
            kinds.push((6, 3));
        }
        let total: u32 = kinds.iter().map(|k| k.1).sum();
        if total == 0 {
            return None;
        }
        let mut pick = rng.below(total as usize) as u32;
        let kind = kinds
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= *w;
                    false
                }
            })
            .map(|k| k.0)?;
        let obj = match kind {
            4 | 6 => None,
            _ => Some(*rng.choose(&editable)?),
        };
        let obj = obj.unwrap_or(Object {
            cell: 0,
            shape: Shape::Circle,
            colour: Colour::Red,
            size: Size::Small,
        });
        Some(match kind {
            0 => Edit::Recolour {
                cell: obj.cell,
                to: obj.colour.random_other(rng),
            },
            1 => Edit::Reshape {
                cell: obj.cell,
                to: obj.shape.random_other(rng),
            },
            2 => Edit::Resize {
                cell: obj.cell,
                to: obj.size.random_other(rng),
            },
            3 => Edit::Move {
                from: obj.cell,
                to: *rng.choose(&free)?,
            },
            4 => Edit::Add {
                object: Object {
                    cell: *rng.choose(&free)?,
                    shape: Shape::random(rng),
                    colour: Colour::random(rng),
                    size: Size::random(rng),
                },
            },
            5 => Edit::Remove { cell: obj.cell },
            _ => Edit::Background {
                to: scene.background.random_other(rng),
            },
        })
    }
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
    fn captions_and_keys() {
        let s = Scene::new(
            Background::Grey,
            vec![
                obj(4, Shape::Square, Colour::Blue, Size::Small),
                obj(0, Shape::Circle, Colour::Red, Size::Large),
            ],
        );
        assert_eq!(
            s.caption(),
            "a large red circle in the top left and a small blue square in the centre on a grey background"
        );
        let s2 = s
            .apply(&Edit::Recolour {
                cell: 0,
                to: Colour::Green,
            })
            .unwrap();
        assert_ne!(s.key(), s2.key());
        assert_eq!(s, Scene::new(Background::Grey, s.objects.clone()));
        assert!(s
            .apply(&Edit::Recolour {
                cell: 0,
                to: Colour::Red
            })
            .is_none());
        assert!(s.apply(&Edit::Move { from: 0, to: 4 }).is_none());
        assert!(s.apply(&Edit::Remove { cell: 7 }).is_none());
        let moved = s.apply(&Edit::Move { from: 0, to: 8 }).unwrap();
        assert_eq!(moved.objects.last().unwrap().cell, 8);
        // Cell labels count classes from 1 (0: empty); a move moves the label.
        let labels = s.cell_labels();
        assert_eq!(labels[0], [1, 1, 2]);
        assert_eq!(labels[4], [2, 3, 1]);
        assert_eq!(labels.iter().filter(|l| **l == [0, 0, 0]).count(), 7);
        let moved = moved.cell_labels();
        assert_eq!((moved[0], moved[8]), ([0, 0, 0], [1, 1, 2]));
    }

    #[test]
    fn random_edits_apply() {
        let mut rng = Rng::new(5);
        for _ in 0..500 {
            let s = Scene::random(&mut rng, 1, 4);
            assert!((1..=4).contains(&s.objects.len()));
            if let Some(e) = Edit::random(&mut rng, &s, &[], 1, 4, true) {
                let t = s.apply(&e).expect("random edits apply");
                assert_ne!(t, s);
                assert!((1..=4).contains(&t.objects.len()));
            }
        }
    }
}
