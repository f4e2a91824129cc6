//! The `textfile` input: every `*.prom` file in a directory, read each tick,
//! as node_exporter's textfile collector does. Each sample gets a `textfile`
//! label naming its file. A file that cannot be read or parsed is reported
//! and skipped; the others are still published.

use std::path::PathBuf;

use super::{CollectError, Collector, Samples, prom};

pub(crate) struct TextfileCollector {
    dir: PathBuf,
}

impl TextfileCollector {
    pub(crate) fn new(dir: PathBuf) -> Self {
        TextfileCollector { dir }
    }
}

impl Collector for TextfileCollector {
    fn name(&self) -> &'static str {
        "textfile"
    }

    fn collect(&mut self, out: &mut Samples) -> Result<(), CollectError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| CollectError::Io {
            what: self.dir.display().to_string(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "prom"))
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let result = std::fs::read_to_string(&path)
                .and_then(|text| prom::parse_into(&text, &[("textfile", &name)], out));
            match result {
                Ok(skipped) if skipped.0 > 0 => {
                    tracing::warn!(file = %path.display(), skipped = skipped.0, "textfile samples with invalid names skipped");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "textfile skipped"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prom_files_and_ignores_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.prom"), "backup_age_seconds 3600\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not_read 1\n").unwrap();
        let mut c = TextfileCollector::new(dir.path().to_owned());
        let mut out = Samples::default();
        c.collect(&mut out).unwrap();
        let v = out.into_vec();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "backup_age_seconds");
        assert_eq!(v[0].labels[0].value, "a.prom");
    }
}
