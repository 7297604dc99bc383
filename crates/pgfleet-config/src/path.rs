//! Config paths as users write them: `clouds[1].databases[0].port`.

use std::fmt;

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A position in the config tree, built while walking it.
#[derive(Debug, Clone, Default)]
pub struct ConfigPath(Vec<Segment>);

impl ConfigPath {
    /// The root of the tree.
    pub fn root() -> Self {
        Self::default()
    }

    /// Descends into a map key.
    pub fn push_key(&mut self, key: &str) {
        self.0.push(Segment::Key(key.to_owned()));
    }

    /// Descends into an array element.
    pub fn push_index(&mut self, index: usize) {
        self.0.push(Segment::Index(index));
    }

    /// Goes back up one level.
    pub fn pop(&mut self) {
        self.0.pop();
    }

    /// A child path, for building problem paths without mutation.
    pub fn key(&self, key: &str) -> Self {
        let mut child = self.clone();
        child.push_key(key);
        child
    }

    /// A child path for an array element.
    pub fn index(&self, index: usize) -> Self {
        let mut child = self.clone();
        child.push_index(index);
        child
    }
}

impl fmt::Display for ConfigPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}
