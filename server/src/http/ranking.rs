//! Logits to answers, in one place: top-k classes, the "not understood" threshold and the
//! spoken intent. Used by the task API (`/v1/.../predict`), the OIP v2 `classification` output
//! (HTTP and gRPC) and `shiftserve run`; each front end only puts the result in its wire format.

use models::{Intent, ModelInfo, Task};

/// Top-k `(index, score)` by descending score (ties: lower index first). A `k` above the number
/// of scores returns every score.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter().map(|i| (i, scores[i])).collect()
}

/// A task answer for one sample.
#[derive(Debug, PartialEq)]
pub struct Ranking<'a> {
    /// The top-k classes by softmax probability: `(index, probability)`.
    pub top: Vec<(usize, f32)>,
    /// False when the top-1 probability is below the threshold; true without a threshold.
    pub understood: bool,
    /// For a `spoken_intent` model whose answer is understood: the top-1 class's intent.
    pub intent: Option<&'a Intent>,
}

/// Ranks one sample's logits: softmax (with the model's calibrated temperature), the `k` most probable classes (at least one), the
/// threshold on the top-1 probability, and the intent of the top-1 class.
pub fn rank<'a>(
    info: &'a ModelInfo,
    logits: &[f32],
    k: usize,
    threshold: Option<f32>,
) -> Ranking<'a> {
    let probs = info.scores(logits);
    let top = top_k(&probs, k.max(1));
    let understood = match (threshold, top.first()) {
        (Some(t), Some(&(_, p))) => p >= t,
        _ => true,
    };
    let intent = match top.first() {
        Some(&(i, _)) if info.task == Task::SpokenIntent && understood => info.intents.get(i),
        _ => None,
    };
    Ranking {
        top,
        understood,
        intent,
    }
}

/// The OIP v2 classification extension's elements for one row of scores (logits or
/// probabilities): the top `k` as `score:index:label` (an empty label past the model's labels).
pub fn classification(labels: &[String], scores: &[f32], k: usize) -> Vec<String> {
    top_k(scores, k)
        .into_iter()
        .map(|(i, s)| {
            format!(
                "{s}:{i}:{}",
                labels.get(i).map(String::as_str).unwrap_or("")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(task: Task, n: usize) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            task,
            labels: (0..n).map(|i| format!("c{i}")).collect(),
            intents: (0..n)
                .map(|i| Intent {
                    action: format!("a{i}"),
                    object: format!("o{i}"),
                    location: format!("l{i}"),
                })
                .collect(),
            input_shape: vec![n],
            preprocess_json: "{}".into(),
            input_kind: "audio",
            weight_bits: vec![3],
            file_bytes: 0,
            fp32_bytes: 0,
            parameters: 0,
            numeric_path: "none".into(),
            description: String::new(),
            temperature: None,
            tensor_train: None,
        }
    }

    #[test]
    fn top_k_orders_ties_by_index_and_truncates() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.2, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.2)]
        );
        assert_eq!(top_k(&[0.3, 0.3, 0.3], 2), vec![(0, 0.3), (1, 0.3)]);
    }

    #[test]
    fn k_larger_than_the_classes_returns_every_class() {
        assert_eq!(top_k(&[1.0], 5), vec![(0, 1.0)]);
        assert_eq!(top_k(&[], 3), vec![]);
        let i = info(Task::ImageClassification, 3);
        let r = rank(&i, &[0.0, 2.0, 1.0], 10, None);
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2, 0]);
        let sum: f32 = r.top.iter().map(|t| t.1).sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert_eq!(
            classification(&i.labels, &[0.5, 2.0], 7),
            vec!["2:1:c1".to_string(), "0.5:0:c0".to_string()]
        );
        // A class past the labels has an empty label.
        assert_eq!(classification(&i.labels[..1], &[0.5, 2.0], 1), vec!["2:1:"]);
    }

    #[test]
    fn k_zero_still_ranks_the_top_class() {
        let i = info(Task::ImageClassification, 2);
        assert_eq!(rank(&i, &[0.0, 1.0], 0, None).top.len(), 1);
    }

    #[test]
    fn threshold_below_and_above_the_top_score() {
        let i = info(Task::SpokenIntent, 2);
        // Equal logits: each class has probability 0.5.
        let below = rank(&i, &[1.0, 1.0], 2, Some(0.4));
        assert!(below.understood);
        assert_eq!(below.intent.map(|it| it.action.as_str()), Some("a0"));
        let at = rank(&i, &[1.0, 1.0], 2, Some(0.5));
        assert!(
            at.understood,
            "a score equal to the threshold is understood"
        );
        let above = rank(&i, &[1.0, 1.0], 2, Some(0.6));
        assert!(!above.understood);
        assert_eq!(above.intent, None, "no intent when not understood");
        // The scores are given either way.
        assert_eq!(above.top, below.top);
        let none = rank(&i, &[0.0, 3.0], 1, None);
        assert!(none.understood);
        assert_eq!(none.intent.map(|it| it.object.as_str()), Some("o1"));
    }

    #[test]
    fn the_models_temperature_calibrates_scores_and_the_threshold_applies_to_them() {
        let mut i = info(Task::SpokenIntent, 2);
        let logits = [0.0, 1.0];
        // T = 1: softmax(1) of two classes = 1 / (1 + e^-1) = 0.7311.
        let plain = rank(&i, &logits, 2, Some(0.8));
        assert!(
            (plain.top[0].1 - 0.731_058_6).abs() < 1e-6,
            "{:?}",
            plain.top
        );
        assert!(!plain.understood);
        let plain = plain.top;
        // T = 0.5 sharpens: softmax(2) = 0.8808, now above the threshold.
        i.temperature = Some(0.5);
        let sharp = rank(&i, &logits, 2, Some(0.8));
        assert!((sharp.top[0].1 - 0.880_797).abs() < 1e-6, "{:?}", sharp.top);
        assert!(sharp.understood);
        assert_eq!(sharp.intent.map(|it| it.action.as_str()), Some("a1"));
        // T = 2 softens: softmax(0.5) = 0.6225; the order of the classes never changes.
        i.temperature = Some(2.0);
        let soft = rank(&i, &logits, 2, None);
        assert!((soft.top[0].1 - 0.622_459_3).abs() < 1e-6, "{:?}", soft.top);
        assert_eq!(soft.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 0]);
        // T = 1 written out is the plain softmax, bit for bit.
        i.temperature = Some(1.0);
        assert_eq!(rank(&i, &logits, 2, None).top, plain);
    }

    #[test]
    fn only_spoken_intent_models_have_intents() {
        let i = info(Task::ImageClassification, 2);
        let r = rank(&i, &[0.0, 3.0], 1, None);
        assert!(r.understood);
        assert_eq!(r.intent, None);
    }
}
