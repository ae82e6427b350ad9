//! Few-shot layouts of in-context prompts: inline (the paper's), turns, a format of one's own;
//! expected prompts written out by hand (the turns one as transformers' `apply_chat_template`
//! renders the tiny Qwen3 template, checked once with transformers 5.24).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::path::PathBuf;
use std::sync::Arc;

use icpo_policy::{ChatMessage, Tokenizer};
use icpo_rollout::{
    Demo, DemoLayout, FewShot, PromptBuilder, PromptFormat, PromptParts, PromptTemplate,
};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny-qwen3"))
        .unwrap()
}

fn demo(problem: &str, solution: &str) -> Demo {
    Demo { id: problem.into(), problem: problem.into(), solution: solution.into() }
}

#[test]
fn inline_layout_is_the_papers_prompt() {
    let tok = tokenizer();
    let b = PromptBuilder::new(&tok);
    let d = demo("1+1?", "2");
    let ids = b.in_context("3+3?", &[&d]).unwrap();
    let expected = "<|im_start|>user\nHere are examples of problems with worked solutions:\n\nProblem:\n1+1?\n\nSolution:\n2\n\nNow solve the following problem.\n\n3+3? Let's think step by step and output the final answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(tok.decode(&ids, false).unwrap(), expected);
    assert_eq!(ids, tok.encode(expected, false).unwrap());
}

#[test]
fn turns_layout_matches_the_chat_template_of_the_turns() {
    let tok = tokenizer();
    let mut b = PromptBuilder::new(&tok);
    b.few_shot.layout = DemoLayout::Turns;
    b.system = "Be brief.".into();
    b.instruction = "Box it.".into();
    let d = demo("1+1?", "2");
    let ids = b.in_context("3+3?", &[&d]).unwrap();
    let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+1? Box it.<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n3+3? Box it.<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(tok.decode(&ids, false).unwrap(), expected);
    // The plain prompt has no demonstration turns.
    let plain = tok.decode(&b.plain("3+3?").unwrap(), false).unwrap();
    assert_eq!(
        plain,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3+3? Box it.<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn custom_inline_texts_and_the_raw_template() {
    let tok = tokenizer();
    let mut b = PromptBuilder::new(&tok);
    b.template = PromptTemplate::Raw;
    b.instruction = "Box it.".into();
    b.few_shot = FewShot {
        header: "Examples:\n".into(),
        item: "Q: {problem}\nA: {solution}\n".into(),
        footer: "---\n".into(),
        ..FewShot::default()
    };
    let (d1, d2) = (demo("1+1?", "2"), demo("2+2?", "4"));
    let text = tok.decode(&b.in_context("3+3?", &[&d1, &d2]).unwrap(), false).unwrap();
    assert_eq!(
        text,
        "Question:\nExamples:\nQ: 1+1?\nA: 2\nQ: 2+2?\nA: 4\n---\n3+3? Box it.\n\nAnswer:\n"
    );
    b.few_shot.layout = DemoLayout::Turns;
    let text = tok.decode(&b.in_context("3+3?", &[&d1]).unwrap(), false).unwrap();
    assert_eq!(
        text,
        "Question:\n1+1? Box it.\n\nAnswer:\n2\n\nQuestion:\n3+3? Box it.\n\nAnswer:\n"
    );
}

#[test]
fn turns_drop_trailing_demonstrations_to_fit() {
    let tok = tokenizer();
    let mut b = PromptBuilder::new(&tok);
    b.few_shot.layout = DemoLayout::Turns;
    let long = "word ".repeat(60);
    let demos = [demo("a?", &long), demo("b?", &long), demo("c?", &long)];
    let refs: Vec<&Demo> = demos.iter().collect();
    let full = b.in_context("q?", &refs).unwrap().len();
    let two = b.in_context("q?", &refs[..2]).unwrap();
    b.max_prompt_tokens = full - 1;
    assert_eq!(b.in_context("q?", &refs).unwrap(), two, "the third demonstration dropped");
    b.max_prompt_tokens = 20;
    let e = b.in_context("q?", &refs).unwrap_err().to_string();
    assert!(e.contains("max_prompt_tokens = 20"), "{e}");
}

/// Demonstrations in the system turn: a layout the built-in one does not offer.
#[derive(Debug)]
struct InSystem;

impl PromptFormat for InSystem {
    fn messages(&self, parts: &PromptParts<'_>) -> Vec<ChatMessage> {
        let mut sys = String::from("Solve.");
        for d in parts.demos {
            sys.push_str(&format!(" [{} => {}]", d.problem, d.solution));
        }
        vec![ChatMessage::new("system", sys), ChatMessage::new("user", parts.problem)]
    }
}

#[test]
fn a_format_of_ones_own_makes_plain_and_in_context_prompts() {
    let tok = tokenizer();
    let mut b = PromptBuilder::new(&tok);
    b.format = Some(Arc::new(InSystem));
    let d = demo("1+1?", "2");
    let text = tok.decode(&b.in_context("3+3?", &[&d]).unwrap(), false).unwrap();
    assert_eq!(text, "<|im_start|>system\nSolve. [1+1? => 2]<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n");
    let plain = b.plain_text("3+3?").unwrap();
    assert_eq!(plain, "<|im_start|>system\nSolve.<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n");
}
