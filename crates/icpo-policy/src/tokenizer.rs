//! Tokenizer (tokenizer.json) and chat template (tokenizer_config.json / chat_template.jinja).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, read_json, PolicyError, Result};

/// One chat message, as passed to a chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A Hugging Face tokenizer with its chat template and special token ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_token_ids: Vec<i64>,
    pad_token_id: Option<i64>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("eos_token_ids", &self.eos_token_ids)
            .field("pad_token_id", &self.pad_token_id)
            .finish()
    }
}

/// A special token in tokenizer_config.json: a string or an AddedToken object.
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => {
            o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
        }
        _ => None,
    }
}

/// `eos_token_id` of generation_config.json / config.json: an integer or a list.
fn id_list(v: Option<&serde_json::Value>) -> Vec<i64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
        _ => Vec::new(),
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a checkpoint directory, plus (when present)
    /// `tokenizer_config.json`, `chat_template.jinja` and `generation_config.json` for the chat
    /// template and the EOS / padding ids.
    ///
    /// EOS ids are the union of generation_config.json's `eos_token_id` (what `generate` stops
    /// on) and the tokenizer's `eos_token`; the pad id comes from generation_config.json, else
    /// the tokenizer's `pad_token`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(PolicyError::Io {
                path,
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "tokenizer.json not found",
                ),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| PolicyError::Tokenizer { path: path.clone(), message: e.to_string() })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value =
            if cfg_path.exists() { read_json(&cfg_path)? } else { serde_json::Value::Null };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).map_err(io_err(&jinja))?)
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: use "default".
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
                _ => None,
            }
        };
        let bos_token = token_text(cfg.get("bos_token"));
        let eos_token = token_text(cfg.get("eos_token"));
        let pad_token = token_text(cfg.get("pad_token"));
        let gen_path = dir.join("generation_config.json");
        let gen: serde_json::Value =
            if gen_path.exists() { read_json(&gen_path)? } else { serde_json::Value::Null };
        let mut eos_token_ids = id_list(gen.get("eos_token_id"));
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            if !eos_token_ids.contains(&(id as i64)) {
                eos_token_ids.push(id as i64);
            }
        }
        let pad_token_id = gen
            .get("pad_token_id")
            .and_then(|v| v.as_i64())
            .or_else(|| pad_token.as_deref().and_then(|t| inner.token_to_id(t)).map(i64::from));
        Ok(Tokenizer {
            inner,
            path,
            chat_template,
            bos_token,
            eos_token,
            eos_token_ids,
            pad_token_id,
        })
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| {
            PolicyError::Tokenizer { path: self.path.clone(), message: e.to_string() }
        })?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`; ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| PolicyError::Tokenizer {
                    path: self.path.clone(),
                    message: format!("cannot decode id {i}"),
                })
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| PolicyError::Tokenizer { path: self.path.clone(), message: e.to_string() })
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids that end a generation.
    pub fn eos_token_ids(&self) -> &[i64] {
        &self.eos_token_ids
    }

    /// The padding id, if the checkpoint names one.
    pub fn pad_token_id(&self) -> Option<i64> {
        self.pad_token_id
    }

    /// The chat template, if the checkpoint has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders `messages` with the checkpoint's chat template, as transformers'
    /// `apply_chat_template(..., tokenize=False)` does (Jinja with `trim_blocks` and
    /// `lstrip_blocks`, Python string methods, `raise_exception`).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, &TemplateArgs::new())
    }

    /// [`Tokenizer::apply_chat_template`] with extra template variables, as transformers'
    /// `apply_chat_template(..., **kwargs)` passes them (Qwen3's `enable_thinking`, tools, dates).
    pub fn apply_chat_template_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        args: &TemplateArgs,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            PolicyError::Template(format!(
                "{}: the checkpoint has no chat template",
                self.path.display()
            ))
        })?;
        render_chat_template_with(
            template,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
            args,
        )
    }
}

/// Extra variables for a chat template, by name.
pub type TemplateArgs = std::collections::BTreeMap<String, serde_json::Value>;

/// Renders a Hugging Face chat template with minijinja.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    render_chat_template_with(
        template,
        messages,
        add_generation_prompt,
        bos_token,
        eos_token,
        &TemplateArgs::new(),
    )
}

/// [`render_chat_template`] with extra template variables (`args`; the named ones above win).
pub fn render_chat_template_with(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
    args: &TemplateArgs,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template).map_err(|e| PolicyError::Template(format!("{e:#}")))?;
    let tmpl = env.get_template("chat").map_err(|e| PolicyError::Template(format!("{e:#}")))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token.unwrap_or(""),
        eos_token => eos_token.unwrap_or(""),
        ..minijinja::Value::from_serialize(args)
    })
    .map_err(|e| PolicyError::Template(format!("{e:#}")))
}
