// The safetensors reader validates the whole header; every kind of lie or truncation is an error
// that names the file, never a crash. (Built with ASan + UBSan in CI.)
#include <fstream>

#include "peft/error.h"
#include "peft/io/safetensors.h"
#include "support.h"

using namespace peft;

namespace {

std::string write_raw(const std::string & name, const std::string & header, const std::string & data) {
  std::string path = test::temp_dir("st") + "/" + name;
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f << header << data;
  return path;
}

// the error reading every tensor of `path` gives ("" if none)
std::string error_of(const std::string & path) {
  return test::error_of([&] {
    SafeTensorsFile f(path);
    for (const auto & k : f.keys()) f.get(k);
  });
}

TEST(SafeTensors, RoundTripAllDtypes) {
  std::string path = test::temp_dir("st") + "/rt.safetensors";
  std::map<std::string, at::Tensor> t = {{"f32", at::randn({3, 4})},
                                         {"bf16", at::randn({5}).to(at::kBFloat16)},
                                         {"f16", at::randn({2, 2}).to(at::kHalf)},
                                         {"i64", at::arange(7)},
                                         {"empty", at::zeros({0, 3})}};
  safetensors_save(path, t, {{"format", "pt"}});
  SafeTensorsFile f(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (auto & kv : t) {
    at::Tensor got = f.get(kv.first);
    EXPECT_EQ(got.scalar_type(), kv.second.scalar_type());
    EXPECT_TRUE(at::equal(got, kv.second)) << kv.first;
  }
}

TEST(SafeTensors, ReadsUpstreamFile) {
  SafeTensorsFile f(test::golden_model("tiny-llama") + "/model.safetensors");
  EXPECT_EQ(f.get("model.embed_tokens.weight").sizes(), (at::IntArrayRef{96, 32}));
}

TEST(SafeTensors, TruncatedFile) {
  std::string path = test::temp_dir("st") + "/short.safetensors";
  std::ofstream(path) << "abc";
  EXPECT_NE(error_of(path).find("truncated"), std::string::npos);
}

TEST(SafeTensors, HeaderLengthPastEnd) {
  std::string path = test::temp_dir("st") + "/long.safetensors";
  std::ofstream f(path, std::ios::binary);
  uint64_t n = 1000;
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((n >> (8 * i)) & 0xff));
  f << "{}";
  f.close();
  EXPECT_NE(error_of(path).find("past the end"), std::string::npos);
}

TEST(SafeTensors, BadJson) {
  EXPECT_NE(error_of(write_raw("bad.st", "{not json", "")).find("JSON"), std::string::npos);
}

TEST(SafeTensors, OffsetsOutOfRange) {
  auto p = write_raw("oor.st", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234");
  EXPECT_NE(error_of(p).find("outside"), std::string::npos);
}

TEST(SafeTensors, SizeMismatch) {
  auto p = write_raw("sz.st", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678");
  EXPECT_NE(error_of(p).find("needs 12 bytes"), std::string::npos);
}

TEST(SafeTensors, Overlap) {
  auto p = write_raw("ov.st",
                     R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     "123456789012");
  EXPECT_NE(error_of(p).find("overlap"), std::string::npos);
}

TEST(SafeTensors, UnknownDtype) {
  auto p = write_raw("dt.st", R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", "12");
  EXPECT_NE(error_of(p).find("Q4"), std::string::npos);
}

TEST(SafeTensors, NegativeShapeAndReversedOffsets) {
  auto p = write_raw("neg.st", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "1234");
  EXPECT_NE(error_of(p).find("non-negative"), std::string::npos);
  p = write_raw("rev.st", R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,2]}})", "1234");
  EXPECT_NE(error_of(p).find("reversed"), std::string::npos);
}

TEST(SafeTensors, ErrorsNameTheFile) {
  auto p = write_raw("named.st", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678");
  EXPECT_NE(error_of(p).find("named.st"), std::string::npos);
}

}  // namespace
