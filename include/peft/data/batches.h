// Training and evaluation sequences cut from a TokenDataset, and batches of them as tensors.
//   pad     one document per row, truncated to max_length; rows right-padded, with an attention mask
//           (JSONL records and token-id rows);
//   concat  the documents joined end to end and cut into blocks of max_length (plain text, as
//           transformers' run_clm: attention runs across document boundaries);
//   pack    concat, but positions restart at each document and no token attends across a boundary
//           (segment ids), and the first token of a document is not predicted from the one before.
// B = batch, S = sequence.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "peft/data/dataset.h"
#include "peft/util/options.h"

namespace peft {

enum class SequenceLayout { pad, concat, pack };
inline const std::vector<std::string> & choice_names(SequenceLayout) {
  static const std::vector<std::string> names = {"pad", "concat", "pack"};
  return names;
}
/// The layout `peft train` gives a data format: pack with packing, else concat for plain text and pad
/// for records and token-id rows.
inline SequenceLayout layout_for(DataFormat format, bool packing) {
  return packing ? SequenceLayout::pack : format == DataFormat::txt ? SequenceLayout::concat : SequenceLayout::pad;
}

struct Batch {
  at::Tensor input_ids;       // (B, S) int64
  at::Tensor attention_mask;  // (B, S) 1 = token, 0 = padding; undefined when nothing is padded
  at::Tensor position_ids;    // (B, S) per-document positions (pack); undefined otherwise
  at::Tensor segment_ids;     // (B, S) document index within the row (pack); undefined otherwise
  at::Tensor labels;          // (B, S) the token where the loss counts, -100 elsewhere (position 0 never counts)
  int64_t loss_tokens = 0;    // predicted tokens that count: labels[:, 1:] != -100
  int64_t tokens = 0;         // real (non-padding) tokens
};

class SequenceSet {
 public:
  /// layout: pad | concat | pack (see above; the enum or its name). pad_id fills padding (masked; any valid id).
  SequenceSet(std::shared_ptr<const TokenDataset> data, Choice<SequenceLayout> layout, int64_t max_length,
              int64_t pad_id = 0);
  size_t size() const;  // sequences
  SequenceLayout layout() const { return layout_; }
  int64_t max_length() const { return max_length_; }
  const TokenDataset & data() const { return *data_; }
  /// The sequences `seqs` as one batch (S = the longest of them).
  Batch batch(const std::vector<size_t> & seqs) const;
  /// Predicted tokens that count in sequence `i` (for weighting losses without building the batch).
  int64_t loss_tokens(size_t i) const;

 private:
  struct Piece {
    size_t doc, begin, end;
  };
  std::vector<Piece> pieces(size_t seq) const;
  std::shared_ptr<const TokenDataset> data_;
  SequenceLayout layout_;
  int64_t max_length_, pad_id_;
  std::vector<uint64_t> starts_;  // concat/pack: token offset of each document in the joined stream
  uint64_t total_ = 0;
};

}  // namespace peft
