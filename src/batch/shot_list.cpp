#include "batch/shot_list.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>

#include "batch/sha256.h"
#include "core/error.h"
#include "pipelines/t2v_mode.h"

namespace vdm::batch {

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kOutputExtensions = {".mp4", ".webm", ".gif"};

// Collects problems as "<source>:<line>: <where>: <what>".
class Problems {
 public:
  explicit Problems(std::string source) : source_(std::move(source)) {}
  void add(int line, const std::string& where, const std::string& what) {
    std::string loc = line > 0 ? fmt::format("{}:{}", source_, line) : source_;
    items_.push_back(where.empty() ? fmt::format("{}: {}", loc, what)
                                   : fmt::format("{}: {}: {}", loc, where, what));
  }
  bool empty() const { return items_.empty(); }
  [[noreturn]] void raise() const {
    std::string msg = fmt::format(
        "shot list {} has {} problem{}; nothing was rendered. Fix these and run again:", source_,
        items_.size(), items_.size() == 1 ? "" : "s");
    for (const auto& item : items_) msg += "\n  " + item;
    throw ConfigError(msg);
  }

 private:
  std::string source_;
  std::vector<std::string> items_;
};

int line_of(const YAML::Node& node) {
  const YAML::Mark m = node.Mark();
  return m.is_null() ? 0 : m.line + 1;
}

std::string describe_node(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Null: return "nothing (empty value)";
    case YAML::NodeType::Scalar:
      if (node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str")
        return fmt::format("the string \"{}\"", node.Scalar());
      return fmt::format("'{}'", node.Scalar());
    default: return "an undefined value";
  }
}

// Whether a scalar was written as a plain (unquoted) value, as numbers are.
bool is_plain_number_scalar(const YAML::Node& node) {
  const std::string& tag = node.Tag();
  return node.IsScalar() && (tag == "?" || tag == "tag:yaml.org,2002:int" ||
                             tag == "tag:yaml.org,2002:float");
}

std::optional<int64_t> parse_int(const std::string& s) {
  int64_t v = 0;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (b != e && *b == '+') ++b;
  auto r = std::from_chars(b, e, v);
  if (r.ec != std::errc() || r.ptr != e || b == e) return std::nullopt;
  return v;
}

std::optional<double> parse_double(const std::string& s) {
  if (s.empty()) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
  // Reject hexadecimal floats and the like: plain decimal notation only.
  if (s.find_first_of("xXnNiI") != std::string::npos) return std::nullopt;
  return v;
}

// Keys of one mapping (defaults or a shot), each optional, with the line it came from.
struct Fields {
  std::optional<std::string> id, prompt, negative_prompt, sampler, t2v_mode, image, video, output;
  std::optional<uint64_t> seed;
  std::optional<int64_t> frames, fps, width, height, steps, context_frames, context_stride, deep_cache,
      deep_cache_branch, extend, free_init;
  std::optional<double> guidance, guidance_rescale, strength;
  std::optional<std::vector<models::LoraSpec>> loras;
  std::optional<std::map<int64_t, std::string>> prompt_at, negative_prompt_at;
  std::optional<models::FreeU> freeu;
  std::map<std::string, int> lines;  // key -> line
};

enum class Kind { kString, kInt, kSeed, kNumber, kKeyframes };

struct KeySpec {
  std::string name;
  Kind kind;
  bool allowed_in_defaults;
};

const std::vector<KeySpec>& key_specs() {
  static const std::vector<KeySpec> specs = {
      {"id", Kind::kString, false},         {"prompt", Kind::kString, true},
      {"negative_prompt", Kind::kString, true}, {"seed", Kind::kSeed, true},
      {"frames", Kind::kInt, true},         {"fps", Kind::kInt, true},
      {"width", Kind::kInt, true},          {"height", Kind::kInt, true},
      {"steps", Kind::kInt, true},          {"guidance", Kind::kNumber, true},
      {"sampler", Kind::kString, true},     {"image", Kind::kString, true},
      {"video", Kind::kString, true},       {"strength", Kind::kNumber, true},
      {"output", Kind::kString, false},     {"t2v_mode", Kind::kString, true},
      {"lora", Kind::kString, true},        {"context_frames", Kind::kInt, true},
      {"context_stride", Kind::kInt, true},        {"guidance_rescale", Kind::kNumber, true},
      {"deep_cache", Kind::kInt, true},            {"deep_cache_branch", Kind::kInt, true},
      {"prompt_at", Kind::kKeyframes, true},       {"negative_prompt_at", Kind::kKeyframes, true},
      {"extend", Kind::kInt, true},                {"freeu", Kind::kString, true},
      {"free_init", Kind::kInt, true},
  };
  return specs;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

bool valid_id(const std::string& id) {
  if (id.empty() || id.size() > ShotLimits::kMaxIdLength) return false;
  if (!std::isalnum(static_cast<unsigned char>(id[0]))) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

// Start marks of the documents in a YAML stream, without building nodes.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> marks;
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

struct Documents {
  YAML::Node first;                 // the first document
  std::vector<YAML::Mark> starts;   // where each document starts
};

// The documents of `text`. YAML::LoadAll is not used: on a stray flow token where a document
// should start (",3" or "- a\n,b") yaml-cpp 0.7 yields the same empty document forever, and
// LoadAll collects them until memory runs out. Here a document that starts where the previous
// one started is a syntax error at that place. Throws YAML::ParserException.
Documents load_documents(const std::string& text) {
  Documents docs;
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts scan;
  while (parser.HandleNextDocument(scan)) {
    const size_t n = scan.marks.size();
    if ((n >= 2 && scan.marks[n - 1].pos == scan.marks[n - 2].pos) || n > text.size() + 1) {
      const YAML::Mark& at = scan.marks.back();
      const char c = at.pos >= 0 && static_cast<size_t>(at.pos) < text.size() ? text[at.pos] : '?';
      throw YAML::ParserException(
          at, fmt::format("unexpected '{}' where a value or a new document should start", c));
    }
  }
  docs.starts = std::move(scan.marks);
  if (!docs.starts.empty()) docs.first = YAML::Load(text);
  return docs;
}

class Parser {
 public:
  Parser(std::string source, std::string base_dir)
      : problems_(source), source_(std::move(source)), base_dir_(std::move(base_dir)) {}

  ShotList parse(const std::string& text) {
    Documents docs;
    try {
      docs = load_documents(text);
    } catch (const YAML::ParserException& e) {
      problems_.add(e.mark.is_null() ? 0 : e.mark.line + 1, "",
                    fmt::format("invalid YAML/JSON syntax: {} (column {})", e.msg,
                                e.mark.is_null() ? 0 : e.mark.column + 1));
      problems_.raise();
    }
    if (docs.starts.size() > 1) {
      problems_.add(docs.starts[1].line + 1, "",
                    fmt::format("{} YAML documents ('---'); a shot list is one document",
                                docs.starts.size()));
    }
    if (docs.starts.empty() || docs.first.IsNull()) {
      problems_.add(0, "", "the file is empty; expected a mapping with 'shots:' (and optionally "
                           "'defaults:')");
      problems_.raise();
    }
    const YAML::Node root = docs.first;
    if (!root.IsMap()) {
      problems_.add(line_of(root), "",
                    fmt::format("expected a mapping with 'shots:' at the top level, got {}",
                                describe_node(root)));
      problems_.raise();
    }

    YAML::Node defaults_node, shots_node;
    bool has_defaults = false, has_shots = false;
    int shots_line = 0;
    std::map<std::string, int> seen;
    // Nodes are copied out of the iterator: `it->first` lives in a temporary proxy, and a
    // reference to it dangles at the end of the statement.
    for (auto it = root.begin(); it != root.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar()) {
        problems_.add(line_of(key), "", "top-level keys must be plain names");
        continue;
      }
      const std::string name = key.Scalar();
      const int line = line_of(key);
      if (auto prev = seen.find(name); prev != seen.end()) {
        problems_.add(line, "", fmt::format("duplicate key '{}' (first at line {})", name,
                                            prev->second));
        continue;
      }
      seen[name] = line;
      if (name == "defaults") {
        defaults_node = it->second;
        has_defaults = true;
      } else if (name == "shots") {
        shots_node = it->second;
        has_shots = true;
        shots_line = line;
      } else {
        problems_.add(line, "", unknown_key_message(name, {"defaults", "shots"}));
      }
    }

    Fields defaults;
    if (has_defaults) {
      if (defaults_node.IsMap()) {
        defaults = read_fields(defaults_node, "defaults", /*is_defaults=*/true);
        if (defaults.lines.count("image") && defaults.lines.count("video"))
          problems_.add(defaults.lines["video"], "defaults",
                        "sets both 'image' and 'video'; a shot is animated from an image or "
                        "restyled from a video, so set at most one of them in defaults");
      } else if (!defaults_node.IsNull()) {
        problems_.add(line_of(defaults_node), "defaults",
                      fmt::format("expected a mapping of shot settings, got {}",
                                  describe_node(defaults_node)));
      }
    }

    ShotList list;
    list.source = source_;
    list.dir = base_dir_;
    if (!has_shots) {
      problems_.add(0, "", "missing 'shots:' (a list of shots, each with 'id' and 'prompt')");
    } else if (!shots_node.IsSequence()) {
      problems_.add(shots_line, "shots",
                    fmt::format("expected a list of shots, got {}", describe_node(shots_node)));
    } else if (shots_node.size() == 0) {
      problems_.add(shots_line, "shots", "the list is empty; nothing to render");
    } else {
      std::map<std::string, int> id_lines, output_lines;
      std::map<std::string, std::string> output_owner;
      size_t index = 0;
      for (const YAML::Node& entry : shots_node) {
        const int line = line_of(entry);
        const std::string where = fmt::format("shot #{}", index + 1);
        if (!entry.IsMap()) {
          problems_.add(line, where,
                        fmt::format("expected a mapping with 'id' and 'prompt', got {}",
                                    describe_node(entry)));
          ++index;
          continue;
        }
        // Name the shot by its id in messages when it has a usable one.
        std::string label = where;
        if (YAML::Node id = entry["id"]; id && id.IsScalar() && !id.Scalar().empty())
          label = fmt::format("shot '{}'", id.Scalar());
        Fields f = read_fields(entry, label, /*is_defaults=*/false);
        Shot shot;
        shot.index = index;
        shot.line = line;
        if (resolve(f, defaults, label, line, &shot)) {
          if (auto prev = id_lines.find(shot.id); prev != id_lines.end()) {
            problems_.add(f.lines["id"], label,
                          fmt::format("duplicate id '{}' (first used at line {})", shot.id,
                                      prev->second));
          } else {
            id_lines[shot.id] = f.lines.count("id") ? f.lines["id"] : line;
          }
          if (auto prev = output_owner.find(shot.output); prev != output_owner.end()) {
            problems_.add(f.lines.count("output") ? f.lines["output"] : line, label,
                          fmt::format("output '{}' is also written by shot '{}' (line {})",
                                      shot.output, prev->second, output_lines[shot.output]));
          } else {
            output_owner[shot.output] = shot.id;
            output_lines[shot.output] = line;
          }
          list.shots.push_back(std::move(shot));
        }
        ++index;
      }
    }
    if (!problems_.empty()) problems_.raise();
    return list;
  }

 private:
  std::string unknown_key_message(const std::string& name,
                                  const std::vector<std::string>& candidates) {
    std::string guess = closest_match(name, candidates);
    return guess.empty() ? fmt::format("unknown key '{}' (known keys: {})", name,
                                       fmt::join(candidates, ", "))
                         : fmt::format("unknown key '{}' (did you mean '{}'?)", name, guess);
  }

  Fields read_fields(const YAML::Node& map, const std::string& where, bool is_defaults) {
    Fields f;
    std::vector<std::string> allowed;
    for (const auto& spec : key_specs())
      if (!is_defaults || spec.allowed_in_defaults) allowed.push_back(spec.name);

    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;  // copies: see Parser::parse
      const YAML::Node value = it->second;
      if (!key.IsScalar()) {
        problems_.add(line_of(key), where, "keys must be plain names");
        continue;
      }
      const std::string name = key.Scalar();
      const int line = line_of(key);
      if (auto prev = f.lines.find(name); prev != f.lines.end()) {
        problems_.add(line, where,
                      fmt::format("duplicate key '{}' (first at line {})", name, prev->second));
        continue;
      }
      auto spec = std::find_if(key_specs().begin(), key_specs().end(),
                               [&](const KeySpec& s) { return s.name == name; });
      if (spec == key_specs().end()) {
        problems_.add(line, where, unknown_key_message(name, allowed));
        continue;
      }
      if (is_defaults && !spec->allowed_in_defaults) {
        problems_.add(line, where,
                      fmt::format("'{}' cannot be set in defaults; it belongs to each shot", name));
        continue;
      }
      f.lines[name] = line;
      read_value(*spec, value, line, where, &f);
    }
    return f;
  }

  void read_value(const KeySpec& spec, const YAML::Node& value, int line,
                  const std::string& where, Fields* f) {
    const std::string& name = spec.name;
    auto wrong_type = [&](const char* expected) {
      problems_.add(line, where,
                    fmt::format("key '{}': expected {}, got {}", name, expected,
                                describe_node(value)));
    };
    auto out_of_range = [&](const std::string& got, const std::string& expected) {
      problems_.add(line, where,
                    fmt::format("key '{}': {} is out of range; expected {}", name, got, expected));
    };

    switch (spec.kind) {
      case Kind::kKeyframes: {
        // Prompt travel: {FRAME: PROMPT, ...} with frames from 1 (frame 0 takes prompt or negative_prompt).
        if (!value.IsMap()) return wrong_type("a mapping of frame numbers to prompts, e.g. {8: a blue circle}");
        std::map<int64_t, std::string> keys;
        for (const auto& kv : value) {
          const auto frame = kv.first.IsScalar() ? parse_int(kv.first.Scalar()) : std::nullopt;
          if (!frame || !kv.second.IsScalar())
            return wrong_type("a mapping of frame numbers to prompts, e.g. {8: a blue circle}");
          if (*frame < 1 || *frame >= ShotLimits::kMaxFrames)
            return out_of_range(kv.first.Scalar(), fmt::format("frames 1 to {} (frame 0 takes '{}')",
                                                               ShotLimits::kMaxFrames - 1,
                                                               name == "prompt_at" ? "prompt" : "negative_prompt"));
          keys[*frame] = kv.second.Scalar();
        }
        (name == "prompt_at" ? f->prompt_at : f->negative_prompt_at) = keys;
        return;
      }
      case Kind::kString: {
        if (!value.IsScalar()) return wrong_type("a string");
        const std::string s = value.Scalar();
        if (s.empty()) {
          problems_.add(line, where, fmt::format("key '{}' is empty", name));
          return;
        }
        if (name == "id") {
          if (!valid_id(s)) {
            problems_.add(line, where,
                          fmt::format("id '{}' is not usable: ids are 1 to {} letters, digits, "
                                      "'.', '_' or '-', starting with a letter or digit",
                                      s, ShotLimits::kMaxIdLength));
            return;
          }
          f->id = s;
        } else if (name == "prompt") {
          f->prompt = s;
        } else if (name == "negative_prompt") {
          f->negative_prompt = s;
        } else if (name == "sampler") {
          f->sampler = s;
        } else if (name == "t2v_mode") {
          if (!pipelines::is_t2v_mode(s)) {
            problems_.add(line, where,
                          fmt::format("key 't2v_mode': '{}' is not a mode; expected joint or factorized", s));
            return;
          }
          f->t2v_mode = s;
        } else if (name == "image" || name == "video") {
          fs::path p = fs::path(s);
          if (p.is_relative()) p = fs::path(base_dir_) / p;
          p = p.lexically_normal();
          std::error_code ec;
          if (!fs::is_regular_file(p, ec)) {
            problems_.add(line, where,
                          fmt::format("{} '{}' not found (looked for {})", name, s, p.string()));
            return;
          }
          (name == "image" ? f->image : f->video) = p.string();
        } else if (name == "output") {
          if (!check_output_name(s, line, where)) return;
          f->output = s;
        } else if (name == "lora") {
          std::vector<models::LoraSpec> loras;
          try {
            for (models::LoraSpec spec : models::parse_lora_list(s)) {
              fs::path p = fs::path(spec.path);
              if (p.is_relative()) p = fs::path(base_dir_) / p;
              spec.path = models::lora_weights_file(p.lexically_normal().string());
              loras.push_back(spec);
            }
          } catch (const InputError& e) {
            problems_.add(line, where, fmt::format("key 'lora': {}", e.what()));
            return;
          }
          f->loras = loras;
        } else if (name == "freeu") {
          try {
            f->freeu = models::parse_freeu(s, "key 'freeu'");
          } catch (const InputError& e) {
            problems_.add(line, where, e.what());
            return;
          }
        }
        return;
      }
      case Kind::kInt: {
        if (!value.IsScalar() || !is_plain_number_scalar(value)) return wrong_type("an integer");
        auto v = parse_int(value.Scalar());
        if (!v) return wrong_type("an integer");
        if (name == "frames") {
          if (*v < 1 || *v > ShotLimits::kMaxFrames)
            return out_of_range(std::to_string(*v), fmt::format("1 to {}", ShotLimits::kMaxFrames));
          f->frames = *v;
        } else if (name == "fps") {
          if (*v < 1 || *v > ShotLimits::kMaxFps)
            return out_of_range(std::to_string(*v), fmt::format("1 to {}", ShotLimits::kMaxFps));
          f->fps = *v;
        } else if (name == "width" || name == "height") {
          if (*v < ShotLimits::kMinSize || *v > ShotLimits::kMaxSize)
            return out_of_range(std::to_string(*v), fmt::format("{} to {} pixels", ShotLimits::kMinSize,
                                                                ShotLimits::kMaxSize));
          if (*v % 8 != 0) {
            problems_.add(line, where,
                          fmt::format("key '{}': {} is not a multiple of 8; use {} or {}", name, *v,
                                      *v / 8 * 8, *v / 8 * 8 + 8));
            return;
          }
          (name == "width" ? f->width : f->height) = *v;
        } else if (name == "steps") {
          if (*v < 1 || *v > ShotLimits::kMaxSteps)
            return out_of_range(std::to_string(*v), fmt::format("1 to {}", ShotLimits::kMaxSteps));
          f->steps = *v;
        } else if (name == "context_frames") {
          if (*v < 0 || *v == 1 || *v > ShotLimits::kMaxFrames)
            return out_of_range(std::to_string(*v), fmt::format("0 (off) or 2 to {}", ShotLimits::kMaxFrames));
          f->context_frames = *v;
        } else if (name == "context_stride") {
          if (*v < 1 || *v > ShotLimits::kMaxFrames)
            return out_of_range(std::to_string(*v), fmt::format("1 to {}", ShotLimits::kMaxFrames));
          f->context_stride = *v;
        } else if (name == "extend") {
          if (*v < 1 || *v >= ShotLimits::kMaxFrames)
            return out_of_range(std::to_string(*v), fmt::format("1 to {} frames to add", ShotLimits::kMaxFrames - 1));
          f->extend = *v;
        } else if (name == "deep_cache") {
          if (*v < 0 || *v > ShotLimits::kMaxSteps)
            return out_of_range(std::to_string(*v), fmt::format("0 (off) to {}", ShotLimits::kMaxSteps));
          f->deep_cache = *v;
        } else if (name == "deep_cache_branch") {
          // The upper bound depends on the model: the pipeline checks it before the first render.
          if (*v < 0) return out_of_range(std::to_string(*v), "0 or more");
          f->deep_cache_branch = *v;
        } else if (name == "free_init") {
          if (*v < 0 || *v > 10) return out_of_range(std::to_string(*v), "0 (off) to 10 sampling passes");
          f->free_init = *v;
        }
        return;
      }
      case Kind::kSeed: {
        if (!value.IsScalar() || !is_plain_number_scalar(value))
          return wrong_type("a non-negative integer");
        const std::string& s = value.Scalar();
        uint64_t v = 0;
        auto r = std::from_chars(s.data(), s.data() + s.size(), v);
        if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty()) {
          f->seed = v;
          return;
        }
        if (parse_int(s) || r.ec == std::errc::result_out_of_range)
          return out_of_range(s, "0 to 18446744073709551615");
        return wrong_type("a non-negative integer");
      }
      case Kind::kNumber: {
        if (!value.IsScalar() || !is_plain_number_scalar(value)) return wrong_type("a number");
        auto v = parse_double(value.Scalar());
        if (!v) return wrong_type("a number");
        const std::string got = value.Scalar();
        if (name == "guidance") {
          if (*v < 0 || *v > ShotLimits::kMaxGuidance)
            return out_of_range(got, fmt::format("0 to {}", ShotLimits::kMaxGuidance));
          f->guidance = *v;
        } else if (name == "guidance_rescale") {
          if (*v < 0 || *v > 1) return out_of_range(got, "0 to 1");
          f->guidance_rescale = *v;
        } else if (name == "strength") {
          if (*v <= 0 || *v > 1) return out_of_range(got, "more than 0 and at most 1");
          f->strength = *v;
        }
        return;
      }
    }
  }

  bool check_output_name(const std::string& s, int line, const std::string& where) {
    if (s.find('/') != std::string::npos || s.find('\\') != std::string::npos || s == "." ||
        s == "..") {
      problems_.add(line, where,
                    fmt::format("key 'output': '{}' must be a file name without folders; outputs "
                                "go into the --out folder",
                                s));
      return false;
    }
    if (s[0] == '.') {
      problems_.add(line, where,
                    fmt::format("key 'output': '{}' starts with '.'; hidden names are reserved for "
                                "temporary files",
                                s));
      return false;
    }
    if (s.rfind("manifest", 0) == 0 && fs::path(s).extension() == ".jsonl") {
      problems_.add(line, where,
                    fmt::format("key 'output': '{}' is reserved for the batch manifest", s));
      return false;
    }
    std::string ext = fs::path(s).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (std::find(kOutputExtensions.begin(), kOutputExtensions.end(), ext) ==
        kOutputExtensions.end()) {
      problems_.add(line, where,
                    fmt::format("key 'output': '{}' has extension '{}'; expected one of {}", s, ext,
                                fmt::join(kOutputExtensions, ", ")));
      return false;
    }
    return true;
  }

  // Applies defaults and checks what needs the whole shot. Returns false when the shot cannot be
  // built (problems recorded).
  bool resolve(Fields& f, const Fields& d, const std::string& label, int line, Shot* shot) {
    bool ok = true;
    if (!f.id) {
      if (!f.lines.count("id")) problems_.add(line, label, "missing 'id'");
      ok = false;
    }
    const auto& prompt = f.prompt ? f.prompt : d.prompt;
    if (!prompt) {
      if (!f.lines.count("prompt") && !d.lines.count("prompt"))
        problems_.add(line, label, "missing 'prompt'");
      ok = false;
    }
    const bool has_image = f.image || (!f.video && !f.lines.count("video") && d.image);
    const bool has_video = f.video || (!f.image && !f.lines.count("image") && d.video);
    if (f.lines.count("image") && f.lines.count("video")) {
      problems_.add(f.lines["video"], label,
                    "sets both 'image' and 'video'; a shot is animated from an image or restyled "
                    "from a video, not both");
      ok = false;
    }
    if (f.strength && !has_image && !has_video && !f.lines.count("image") &&
        !f.lines.count("video")) {
      problems_.add(f.lines["strength"], label,
                    "key 'strength' applies only to shots with 'image' or 'video'");
      ok = false;
    }
    if (f.extend && !has_video && !f.lines.count("video")) {
      problems_.add(f.lines["extend"], label, "key 'extend' applies only to shots with 'video' (the clip to continue)");
      ok = false;
    }
    const int64_t free_init = f.free_init.value_or(d.free_init.value_or(0));
    const bool restyled = (has_video || f.lines.count("video")) && !f.extend && !d.extend;
    if (free_init > 1 && restyled) {
      problems_.add(f.free_init ? f.lines["free_init"] : line, label,
                    "key 'free_init': FreeInit samples from pure noise, and a restyled shot starts from its video "
                    "(strength); drop free_init from this shot");
      ok = false;
    }
    if (f.t2v_mode && (has_image || has_video || f.lines.count("image") || f.lines.count("video"))) {
      problems_.add(f.lines["t2v_mode"], label,
                    "key 't2v_mode' applies only to text-to-video shots (without 'image' or 'video')");
      ok = false;
    }
    const int64_t context_frames = f.context_frames.value_or(d.context_frames.value_or(0));
    const int64_t context_stride = f.context_stride.value_or(d.context_stride.value_or(ShotDefaults::kContextStride));
    if (context_frames > 0 && context_stride > context_frames) {
      const bool own = f.context_stride || f.context_frames;
      problems_.add(own ? f.lines[f.context_stride ? "context_stride" : "context_frames"] : line, label,
                    fmt::format("key 'context_stride': {} is more than context_frames {}; windows would leave "
                                "frames out (use at most {}; 4 is usual)",
                                context_stride, context_frames, context_frames));
      ok = false;
    }
    const int64_t frames = f.frames.value_or(d.frames.value_or(ShotDefaults::kFrames));
    for (const char* key : {"prompt_at", "negative_prompt_at"}) {
      const bool positive = std::string(key) == "prompt_at";
      const auto& own = positive ? f.prompt_at : f.negative_prompt_at;
      const auto& keys = own ? own : positive ? d.prompt_at : d.negative_prompt_at;
      if (keys && !keys->empty() && keys->rbegin()->first >= frames) {
        problems_.add(own ? f.lines[key] : line, label,
                      fmt::format("key '{}': frame {} is past the shot's last frame {}", key, keys->rbegin()->first,
                                  frames - 1));
        ok = false;
      }
    }
    if (!ok) return false;
    shot->id = *f.id;
    shot->prompt = *prompt;
    shot->negative_prompt = f.negative_prompt.value_or(d.negative_prompt.value_or(""));
    if (f.seed || d.seed) {
      shot->seed = f.seed ? *f.seed : *d.seed;
    } else {
      shot->seed = derive_seed(shot->id);
      shot->seed_derived = true;
    }
    shot->frames = f.frames.value_or(d.frames.value_or(ShotDefaults::kFrames));
    shot->fps = f.fps.value_or(d.fps.value_or(ShotDefaults::kFps));
    shot->width = f.width.value_or(d.width.value_or(0));
    shot->height = f.height.value_or(d.height.value_or(0));
    shot->steps = f.steps.value_or(d.steps.value_or(ShotDefaults::kSteps));
    shot->guidance = f.guidance.value_or(d.guidance.value_or(ShotDefaults::kGuidance));
    shot->guidance_rescale = f.guidance_rescale.value_or(d.guidance_rescale.value_or(0.0));
    shot->sampler = f.sampler.value_or(d.sampler.value_or(""));
    shot->t2v_mode = f.t2v_mode.value_or(d.t2v_mode.value_or(""));
    if (has_image) shot->image = f.image ? *f.image : *d.image;
    if (has_video) shot->video = f.video ? *f.video : *d.video;
    shot->strength = f.strength.value_or(d.strength.value_or(ShotDefaults::kStrength));
    shot->output = f.output.value_or(shot->id + ".mp4");
    shot->loras = f.loras.value_or(d.loras.value_or(std::vector<models::LoraSpec>{}));
    shot->context_frames = context_frames;
    shot->context_stride = context_stride;
    shot->prompt_at = f.prompt_at.value_or(d.prompt_at.value_or(std::map<int64_t, std::string>{}));
    shot->negative_prompt_at = f.negative_prompt_at.value_or(d.negative_prompt_at.value_or(std::map<int64_t, std::string>{}));
    if (has_video) shot->extend = f.extend.value_or(d.extend.value_or(0));
    shot->deep_cache = f.deep_cache.value_or(d.deep_cache.value_or(0));
    shot->deep_cache_branch = f.deep_cache_branch.value_or(d.deep_cache_branch.value_or(0));
    shot->freeu = f.freeu ? f.freeu : d.freeu;
    shot->free_init = free_init;
    return true;
  }

  Problems problems_;
  std::string source_;
  std::string base_dir_;
};

}  // namespace

const std::vector<std::string>& shot_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k;
    for (const auto& s : key_specs()) k.push_back(s.name);
    return k;
  }();
  return keys;
}

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  const size_t limit = std::max<size_t>(2, std::max(word.size(), best.size()) / 3);
  return best_d <= limit ? best : std::string();
}

uint64_t derive_seed(const std::string& id) {
  Sha256 h;
  h.update("vdm-shot-seed:");
  h.update(id);
  auto d = h.digest();
  return (uint64_t(d[0]) << 24) | (uint64_t(d[1]) << 16) | (uint64_t(d[2]) << 8) | uint64_t(d[3]);
}

ShotList parse_shot_list(const std::string& text, const std::string& source,
                         const std::string& base_dir) {
  Parser parser(source, fs::absolute(base_dir).lexically_normal().string());
  return parser.parse(text);
}

ShotList load_shot_list(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw InputError(fmt::format("shot list {} not found; pass the path of a .yaml or .json shot "
                                 "list",
                                 path));
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw InputError(fmt::format("shot list {}: cannot open: {}", path, std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  fs::path dir = fs::absolute(path).parent_path();
  return parse_shot_list(ss.str(), path, dir.string());
}

}  // namespace vdm::batch
