#include "world/captions.h"

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>
#include <mutex>

#include "core/error.h"

namespace iris::world {

namespace {

// ---- Templates ---------------------------------------------------------------------------------
// Placeholders: {list} object list, {count} number word, {bg} background name, {ref} an object
// reference, {shapes} plural shape, {color}, {shape}, {rel} relation words, {a}/{b} two refs.
const std::vector<TemplateInfo>& templates() {
  static const std::vector<TemplateInfo> t = {
      // Captions.
      {"cap.list", "caption", "{list}", false},
      {"cap.count", "caption", "{count} objects: {list}", false},
      {"cap.picture", "caption", "a picture of {list}", false},
      {"cap.there_is", "caption", "there is {list}", false},
      {"cap.on_bg", "caption", "{list} on a {bg} background", false},
      {"cap.image_with", "caption", "an image with {list}", true},
      {"cap.bg_with", "caption", "a {bg} background with {list}", true},
      // Questions. Each kind has several training phrasings (a model trained on two per kind
      // maps an unseen phrasing to the nearest seen one by surface words, and answers another
      // kind); the held-out ones are never drawn for training. An id "group~n" is a paraphrase
      // of "group": make_questions' `allowed` lists name groups.
      {"q.color.what", "color", "What color is the {ref}?", false},
      {"q.color.which", "color", "Which color does the {ref} have?", false},
      {"q.color.what~1", "color", "What is the color of the {ref}?", false},
      {"q.color.what~2", "color", "Which color is the {ref}?", false},
      {"q.color.what~3", "color", "Name the color of the {ref}.", false},
      {"q.color.what~4", "color", "What color does the {ref} have?", false},
      {"q.color.what~5", "color", "The {ref} is which color?", false},
      {"q.color.tell", "color", "Tell me the color of the {ref}.", true},
      {"q.shape.what", "shape", "What shape is the {ref}?", false},
      {"q.shape.kind", "shape", "What kind of shape is the {ref}?", false},
      {"q.shape.what~1", "shape", "What is the shape of the {ref}?", false},
      {"q.shape.what~2", "shape", "Name the shape of the {ref}.", false},
      {"q.shape.what~3", "shape", "Which shape is the {ref}?", false},
      {"q.shape.what~4", "shape", "What sort of shape does the {ref} have?", false},
      {"q.shape.which", "shape", "Which shape does the {ref} have?", true},
      {"q.size.what", "size", "What size is the {ref}?", false},
      {"q.size.what~1", "size", "What is the size of the {ref}?", false},
      {"q.size.what~2", "size", "Is the {ref} small, medium or large?", false},
      {"q.size.what~3", "size", "How large is the {ref}?", false},
      {"q.size.what~4", "size", "Name the size of the {ref}.", false},
      {"q.size.how", "size", "How big is the {ref}?", true},
      {"q.count.objects", "count", "How many objects are there?", false},
      {"q.count.objects~1", "count", "How many objects are in the picture?", false},
      {"q.count.objects~2", "count", "How many objects can you see?", false},
      {"q.count.objects~3", "count", "What is the number of objects?", false},
      {"q.count.objects~4", "count", "Count the objects.", false},
      {"q.count.shapes", "count", "How many {shapes} are there?", false},
      {"q.count.shapes~1", "count", "How many {shapes} are in the picture?", false},
      {"q.count.shapes~2", "count", "How many {shapes} can you see?", false},
      {"q.count.shapes~3", "count", "What is the number of {shapes}?", false},
      {"q.count.shapes~4", "count", "Tell me how many {shapes} there are.", false},
      {"q.count.colors", "count", "How many {color} objects are in the image?", false},
      {"q.count.colors~1", "count", "How many {color} objects are there?", false},
      {"q.count.colors~2", "count", "How many objects are {color}?", false},
      {"q.count.colors~3", "count", "Count the {color} objects.", false},
      {"q.count.ho", "count", "Count the {shapes} in the image.", true},
      {"q.position.where", "position", "Where is the {ref}?", false},
      {"q.position.part", "position", "In which part of the image is the {ref}?", false},
      {"q.position.where~1", "position", "Where is the {ref} in the image?", false},
      {"q.position.where~2", "position", "Where can you see the {ref}?", false},
      {"q.position.where~3", "position", "What is the position of the {ref}?", false},
      {"q.position.where~4", "position", "Where does the {ref} appear?", false},
      {"q.position.where~5", "position", "In what part of the picture is the {ref}?", false},
      {"q.position.located", "position", "Where in the picture is the {ref} located?", true},
      {"q.relation.what", "relation", "What is {rel} the {ref}?", false},
      {"q.relation.what~1", "relation", "What can you see {rel} the {ref}?", false},
      {"q.relation.what~2", "relation", "What do you find {rel} the {ref}?", false},
      {"q.relation.what~3", "relation", "Name what is {rel} the {ref}.", false},
      {"q.relation.yesno", "relation", "Is the {a} {rel} the {b}?", false},
      {"q.relation.yesno~1", "relation", "Is the {a} placed {rel} the {b}?", false},
      {"q.relation.yesno~2", "relation", "Does the {a} appear {rel} the {b}?", false},
      {"q.relation.which", "relation", "Which objects are {rel} the {ref}?", true},
      {"q.exists.in_image", "exists", "Is there a {color} {shape} in the image?", false},
      {"q.exists.short", "exists", "Is there a {color} {shape}?", false},
      {"q.exists.short~1", "exists", "Do you see a {color} {shape}?", false},
      {"q.exists.short~2", "exists", "Can you see a {color} {shape} in the picture?", false},
      {"q.exists.short~3", "exists", "Is a {color} {shape} in the image?", false},
      {"q.exists.short~4", "exists", "Does the picture show a {color} {shape}?", false},
      {"q.exists.short~5", "exists", "Is there any {color} {shape} in the scene?", false},
      {"q.exists.short~6", "exists", "Has the image got a {color} {shape}?", false},
      {"q.exists.contain", "exists", "Does the image contain a {color} {shape}?", true},
      {"q.style.what", "style", "What style is the image drawn in?", false},
      {"q.style.what~1", "style", "In which style is the image drawn?", false},
      {"q.style.what~2", "style", "What is the drawing style?", false},
      {"q.style.what~3", "style", "How is the picture drawn?", false},
      {"q.style.what~4", "style", "What style does the picture have?", false},
      {"q.style.which", "style", "Which drawing style does this image use?", true},
      {"q.background.what", "background", "What is the background?", false},
      {"q.background.what~1", "background", "Which background does the picture have?", false},
      {"q.background.what~2", "background", "What does the background look like?", false},
      {"q.background.what~3", "background", "Name the background of the image.", false},
      {"q.background.what~4", "background", "What is behind the objects?", false},
      {"q.background.kind", "background", "What kind of background does the image have?", true},
      {"q.figure.present", "figure", "Is there a stick figure in the image?", false},
      {"q.figure.present~1", "figure", "Do you see a stick figure?", false},
      {"q.figure.present~2", "figure", "Is a stick figure in the picture?", false},
      {"q.figure.present~3", "figure", "Does the image show a stick figure?", false},
      {"q.figure.arm", "figure", "Which arm is the stick figure raising?", false},
      {"q.figure.arm~1", "figure", "Which arm does the stick figure raise?", false},
      {"q.figure.arm~2", "figure", "Which arm of the stick figure is up?", false},
      {"q.figure.arm~3", "figure", "Which of the stick figure's arms is raised?", false},
      {"q.figure.color", "figure", "What color is the stick figure?", false},
      {"q.figure.color~1", "figure", "Which color does the stick figure have?", false},
      {"q.figure.color~2", "figure", "What is the color of the stick figure?", false},
      {"q.figure.legs", "figure", "Are the stick figure's legs apart?", false},
      {"q.figure.legs~1", "figure", "Does the stick figure stand with its legs apart?", false},
      {"q.figure.legs~2", "figure", "Are the legs of the stick figure apart?", false},
      {"q.figure.side", "figure", "On which side is the stick figure?", false},
      {"q.figure.side~1", "figure", "On which side of the image is the stick figure?", false},
      {"q.figure.side~2", "figure", "Which side is the stick figure on?", false},
      {"q.figure.arm_ho", "figure", "Which of its arms does the stick figure hold up?", true},
      {"q.describe.plain", "describe", "Describe the image.", false},
      {"q.describe.detail", "describe", "Describe the image in detail.", false},
      {"q.describe.plain~1", "describe", "Describe this picture.", false},
      {"q.describe.plain~2", "describe", "Tell me about the image.", false},
      {"q.describe.plain~3", "describe", "What is in the picture?", false},
      {"q.describe.plain~4", "describe", "Give a description of the image.", false},
      {"q.describe.show", "describe", "What does this image show?", true},
      // Long descriptions (the answer side of "describe").
      {"desc.shows", "description", "The image shows ...", false},
      {"desc.drawn", "description", "{Count} objects are drawn ...", false},
      {"desc.this_is", "description", "This is a {style} picture ...", true},
  };
  return t;
}

// "q.color.what~2" -> "q.color.what": paraphrases belong to the group they paraphrase.
std::string template_group(const std::string& id) { return id.substr(0, id.find('~')); }

// Picks a template of `kind` among those with ids in `allowed` (all when empty), honouring
// the split: training scenes never see held-out templates.
const TemplateInfo& pick_template(const std::string& kind, Rng& rng, Split split, double held_out_probability,
                                  const std::vector<std::string>& allowed = {}) {
  std::vector<const TemplateInfo*> train, held;
  for (const auto& t : templates()) {
    if (t.kind != kind) continue;
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), template_group(t.id)) == allowed.end() &&
        std::find(allowed.begin(), allowed.end(), t.id) == allowed.end())
      continue;
    (t.held_out ? held : train).push_back(&t);
  }
  // Draw the coin even when unused so a scene's stream does not depend on the split.
  const bool use_held = rng.chance(held_out_probability);
  if (split == Split::HeldOut && use_held && !held.empty()) return *rng.pick(held);
  if (train.empty()) throw ConfigError("no training template of kind " + kind);
  return *rng.pick(train);
}

std::string replace_all(std::string s, const std::string& key, const std::string& value) {
  for (size_t p = s.find(key); p != std::string::npos; p = s.find(key, p + value.size()))
    s.replace(p, key.size(), value);
  return s;
}

std::string capitalize(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string join_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += i + 1 == items.size() ? " and " : ", ";
    out += items[i];
  }
  return out;
}

std::string position_variant(int cell, Rng& rng) {
  const int r = cell_row(cell), c = cell_col(cell);
  const bool corner = r != 1 && c != 1;
  if (corner)
    return rng.chance(0.5) ? "at the " + std::string(cell_name(cell))
                           : "in the " + std::string(cell_name(cell)) + " corner";
  if (cell == 4) return rng.chance(0.5) ? "in the center" : "in the middle";
  return position_phrase(cell);
}

std::string arms_phrase(ArmPose a, Rng& rng) {
  const bool v = rng.chance(0.5);
  switch (a) {
    case ArmPose::Down: return v ? "with its arms down" : "with its arms at its sides";
    case ArmPose::LeftUp: return v ? "raising its left arm" : "with its left arm raised";
    case ArmPose::RightUp: return v ? "raising its right arm" : "with its right arm raised";
    case ArmPose::BothUp: return v ? "raising both arms" : "with both arms raised";
    case ArmPose::Out: return v ? "with its arms out" : "with its arms stretched out";
  }
  return "";
}

// "a green stick figure" + " on the left" (side) + " raising its left arm" (arms, when given) +
// " with its legs apart" (legs): the figure's words once the choices are made.
std::string figure_words(const Figure& f, bool side, const std::string& arms, bool legs) {
  std::string s = std::string(article_for(name(f.color))) + " " + name(f.color) + " stick figure";
  if (side) s += f.side == Side::Left ? " on the left" : " on the right";
  if (!arms.empty()) {
    s += " " + arms;
    if (legs) {
      s += arms.rfind("with ", 0) == 0 ? " and " : " with ";
      s += f.legs == LegPose::Apart ? "its legs apart" : "its legs together";
    }
  }
  return s;
}

// "a green stick figure on the left raising its left arm with its legs apart"; without the pose
// "a green stick figure on the left" (the same random draws, so the rest of a caption is unchanged).
std::string figure_phrase(const Figure& f, Rng& rng, Caption* cap, bool side_allowed = true, bool pose = true) {
  const bool side = side_allowed && rng.chance(0.7);
  const std::string arms = arms_phrase(f.arms, rng);
  const bool legs = f.legs == LegPose::Apart ? rng.chance(0.8) : rng.chance(0.3);
  if (cap) {
    cap->figure = cap->figure_color = true;
    cap->arms = pose;
    cap->legs = pose && legs;
  }
  return figure_words(f, side, pose ? arms : std::string(), legs);
}

const char* rel_words(int rel) {
  static const char* const w[] = {"to the left of", "to the right of", "above", "below"};
  return w[rel];
}
// Does object j stand in relation `rel` to object i (left of / right of / above / below)?
bool related(const Object& j, const Object& i, int rel) {
  switch (rel) {
    case 0: return cell_col(j.cell) < cell_col(i.cell);
    case 1: return cell_col(j.cell) > cell_col(i.cell);
    case 2: return cell_row(j.cell) < cell_row(i.cell);
    default: return cell_row(j.cell) > cell_row(i.cell);
  }
}

enum Attr { kColor = 1, kShape = 2, kSize = 4, kPos = 8 };

bool matches(const Object& a, const Object& b, int attrs) {
  return (!(attrs & kColor) || a.color == b.color) && (!(attrs & kShape) || a.shape == b.shape) &&
         (!(attrs & kSize) || a.size == b.size) && (!(attrs & kPos) || a.cell == b.cell);
}

std::string describe_attrs(const Object& o, int attrs) {
  std::string s;
  if (attrs & kSize) s += std::string(name(o.size)) + " ";
  if (attrs & kColor) s += std::string(name(o.color)) + " ";
  s += (attrs & kShape) ? name(o.shape) : "object";
  if (attrs & kPos) s += " " + position_phrase(o.cell);
  return s;
}

// Shortest description of object i that no other object shares, without the attributes in
// `exclude` (so a question does not give its answer away). Empty when there is none.
std::string reference(const Scene& s, size_t i, int exclude) {
  static const int orders[] = {
      kShape, kColor | kShape, kSize | kShape, kColor, kSize | kColor | kShape, kShape | kPos, kColor | kShape | kPos,
      kPos};
  for (int attrs : orders) {
    if (attrs & exclude) continue;
    bool unique = true;
    for (size_t j = 0; j < s.objects.size() && unique; ++j)
      if (j != i && matches(s.objects[j], s.objects[i], attrs)) unique = false;
    if (unique) return describe_attrs(s.objects[i], attrs);
  }
  return "";
}

// "the red circle", or "two red circles" for repeated kinds.
std::string name_objects(const Scene& s, const std::vector<size_t>& idx) {
  if (idx.empty()) return "nothing";
  std::vector<std::pair<std::pair<Color, Shape>, int>> groups;
  for (size_t i : idx) {
    const auto key = std::make_pair(s.objects[i].color, s.objects[i].shape);
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == key; });
    if (it == groups.end())
      groups.push_back({key, 1});
    else
      ++it->second;
  }
  std::vector<std::string> items;
  for (const auto& [key, n] : groups)
    items.push_back(n == 1 ? "the " + std::string(name(key.first)) + " " + name(key.second)
                           : std::string(count_word(n)) + " " + name(key.first) + " " + plural(key.second));
  return join_list(items);
}

const char* arm_answer(ArmPose a) {
  switch (a) {
    case ArmPose::LeftUp: return "left";
    case ArmPose::RightUp: return "right";
    case ArmPose::BothUp: return "both";
    default: return "neither";
  }
}

}  // namespace

const std::vector<TemplateInfo>& all_templates() { return templates(); }

const char* article_for(const std::string& w) {
  return !w.empty() && std::string("aeiou").find(w[0]) != std::string::npos ? "an" : "a";
}

std::string position_phrase(int cell) {
  switch (cell) {
    case 3: return "on the left";
    case 5: return "on the right";
    case 4: return "in the center";
    default: return "at the " + std::string(cell_name(cell));
  }
}

std::string object_phrase(const Object& o, bool size, bool article) {
  std::string core = size ? std::string(name(o.size)) + " " : "";
  core += std::string(name(o.color)) + " " + name(o.shape);
  return article ? std::string(article_for(core)) + " " + core : core;
}

Caption make_caption(const Scene& scene, Rng& rng, const CaptionOptions& opt) {
  Caption cap;
  const size_t n = scene.objects.size();
  std::vector<std::string> allowed = {"cap.list",  "cap.picture",    "cap.there_is",
                                      "cap.on_bg", "cap.image_with", "cap.bg_with"};
  if (n >= 2 && !scene.figure) allowed.push_back("cap.count");
  const TemplateInfo& t = pick_template("caption", rng, opt.split, opt.held_out_template_probability, allowed);
  cap.template_id = t.id;
  cap.held_out_template = t.held_out;

  std::vector<std::string> items;
  for (size_t i = 0; i < n; ++i) {
    const Object& o = scene.objects[i];
    ObjectMention m;
    m.object = static_cast<int>(i);
    m.color = m.shape = true;
    m.size = rng.chance(opt.size_probability);
    m.position = rng.chance(opt.position_probability);
    std::string p = object_phrase(o, m.size, true);
    if (m.position) p += " " + position_variant(o.cell, rng);
    items.push_back(p);
    cap.mentions.push_back(m);
  }
  if (scene.figure) {
    const std::string f = figure_phrase(*scene.figure, rng, &cap, true, opt.pose);
    if (rng.chance(0.5))
      items.insert(items.begin(), f);
    else
      items.push_back(f);
  }
  std::string text = replace_all(t.text, "{list}", join_list(items));
  if (text.find("{count}") != std::string::npos) {
    text = replace_all(text, "{count}", count_word(static_cast<int>(n)));
    cap.count = true;
  }
  if (text.find("{bg}") != std::string::npos) {
    text = replace_all(text, "{bg}", name(scene.background));
    cap.background = true;
  }
  if (rng.chance(opt.style_probability)) {
    text += ", in the " + std::string(name(scene.style)) + " style";
    cap.style = true;
  }
  cap.text = text;
  return cap;
}

Caption complete_caption(const Scene& scene) {
  std::vector<int> order(scene.objects.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return scene.objects[a].cell < scene.objects[b].cell; });
  Caption cap;
  cap.template_id = "cap.on_bg";
  std::vector<std::string> items;
  for (int i : order) {
    const Object& o = scene.objects[i];
    // Corners and the centre have two wordings; a fresh fixed draw picks the same one every time.
    Rng wording(0);
    items.push_back(object_phrase(o, true, true) + " " + position_variant(o.cell, wording));
    ObjectMention m;
    m.object = i;
    m.color = m.shape = m.size = m.position = true;
    cap.mentions.push_back(m);
  }
  if (scene.figure) {
    Rng wording(0);
    items.push_back(figure_words(*scene.figure, true, arms_phrase(scene.figure->arms, wording), true));
    cap.figure = cap.figure_color = cap.arms = cap.legs = true;
  }
  cap.text = join_list(items) + " on a " + std::string(name(scene.background)) + " background, in the " +
             std::string(name(scene.style)) + " style";
  cap.background = cap.style = true;
  return cap;
}

// ---- Long descriptions -------------------------------------------------------------------------

std::string describe_scene(const Scene& s, Rng& rng, bool allow_held_out) {
  const TemplateInfo& t =
      pick_template("description", rng, allow_held_out ? Split::HeldOut : Split::Train, allow_held_out ? 0.5 : 0.0);
  const int n = static_cast<int>(s.objects.size());
  std::vector<std::string> items;
  for (const auto& o : s.objects) items.push_back(object_phrase(o, true, true) + " " + position_variant(o.cell, rng));
  const std::string objects_word = n == 1 ? "object" : "objects";
  const std::string bg = std::string(article_for(name(s.background))) + " " + name(s.background) + " background";
  // The figure as a phrase ("a green stick figure ...") and as a sentence.
  const std::string figure = s.figure ? figure_phrase(*s.figure, rng, nullptr) : "";
  const std::string figure_sentence = s.figure ? capitalize(figure) + "." : "";

  std::string out;
  if (t.id == "desc.shows") {
    out = "The image shows " + std::string(count_word(n)) + " " + objects_word + " on " + bg + ". ";
    out += (n == 1 ? "It is " : "There is ") + join_list(items) + ".";
    if (s.figure) out += " There is also " + figure + ".";
    out += " Everything is drawn in the " + std::string(name(s.style)) + " style.";
  } else if (t.id == "desc.drawn") {
    out = capitalize(count_word(n)) + " " + objects_word + (n == 1 ? " is" : " are") + " drawn in the " +
          name(s.style) + " style on " + bg + ": " + join_list(items) + ".";
    if (s.figure) out += " " + figure_sentence;
  } else {  // desc.this_is
    out = "This is " + std::string(article_for(name(s.style))) + " " + name(s.style) + " picture with " + bg + ". ";
    out += "In it you can see " + join_list(items) + ".";
    if (s.figure) out += " " + figure_sentence;
  }
  return out;
}

// ---- Paraphrase --------------------------------------------------------------------------------

namespace {

// word (lower case, as the templates write it) -> its synonyms
const std::map<std::string, std::vector<std::string>>& synonym_lexicon() {
  static const std::map<std::string, std::vector<std::string>> lex = {
      {"large", {"big", "huge"}},
      {"small", {"little", "tiny"}},
      {"medium", {"medium-sized", "mid-sized"}},
      {"image", {"picture", "scene"}},
      {"picture", {"image", "scene"}},
      {"shows", {"contains", "displays", "depicts"}},
      {"raising", {"lifting", "holding up"}},
      {"raised", {"lifted", "held up"}},
      {"drawn", {"rendered", "painted"}},
      {"objects", {"things", "shapes"}},
      {"object", {"thing", "shape"}},
      {"see", {"spot", "find"}},
  };
  return lex;
}

bool is_object_noun(const std::string& w) {
  static const std::vector<std::string> nouns = {"circle", "square", "triangle", "diamond", "figure"};
  return std::find(nouns.begin(), nouns.end(), w) != nouns.end();
}

}  // namespace

std::string paraphrase(const std::string& text, Rng& rng, double p) {
  // Words split on spaces; a word's trailing punctuation (",", ".", ":") stays with it.
  std::vector<std::string> words;
  for (size_t i = 0; i < text.size();) {
    const size_t j = std::min(text.find(' ', i), text.size());
    if (j > i) words.push_back(text.substr(i, j - i));
    i = j + 1;
  }
  auto split_punct = [](const std::string& w) {
    size_t k = w.size();
    while (k > 0 && std::ispunct(static_cast<unsigned char>(w[k - 1])) && w[k - 1] != '-') --k;
    return std::make_pair(w.substr(0, k), w.substr(k));
  };
  static const std::vector<std::string> verbs = {"located", "placed", "positioned", "situated"};
  std::vector<std::string> out;
  for (size_t i = 0; i < words.size(); ++i) {
    auto [core, punct] = split_punct(words[i]);
    const bool upper = !core.empty() && std::isupper(static_cast<unsigned char>(core[0]));
    std::string lower = core;
    if (upper) lower[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(lower[0])));
    const auto& lex = synonym_lexicon();
    if (auto it = lex.find(lower); it != lex.end() && rng.chance(p)) {
      std::string w = rng.pick(it->second);
      if (upper) w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
      core = w;
    }
    out.push_back(core + punct);
    // "circle at the top left" -> "circle located at the top left"
    if (punct.empty() && is_object_noun(lower) && i + 2 < words.size() && words[i + 2] == "the" &&
        (words[i + 1] == "at" || words[i + 1] == "in" || words[i + 1] == "on") && rng.chance(p))
      out.push_back(rng.pick(verbs));
  }
  // Articles follow the words after them ("an image" -> "a picture").
  std::string joined;
  for (size_t i = 0; i < out.size(); ++i) {
    std::string w = out[i];
    if ((w == "a" || w == "an" || w == "A" || w == "An") && i + 1 < out.size()) {
      std::string next = out[i + 1];
      next[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(next[0])));
      const std::string art = article_for(next);
      w = std::isupper(static_cast<unsigned char>(w[0])) ? std::string(1, static_cast<char>(std::toupper(art[0]))) + art.substr(1)
                                                          : art;
    }
    if (i) joined += ' ';
    joined += w;
  }
  return joined;
}

// ---- Questions ---------------------------------------------------------------------------------

std::vector<std::pair<Color, Shape>> object_popularity(const SamplerOptions& sampler, int n, uint64_t base_seed) {
  std::map<std::pair<int, int>, int> freq;
  for (const Color c : all_colors())
    for (const Shape sh : all_shapes()) freq[{int(c), int(sh)}] = 0;
  for (int i = 0, kept = 0; kept < n && i < n * 4; ++i) {
    const Scene s = sample_scene(sample_seed(base_seed ^ 0x9090ull, i), sampler);
    if (scene_split(s) != Split::Train) continue;
    ++kept;
    for (const auto& o : s.objects) ++freq[{int(o.color), int(o.shape)}];
  }
  std::vector<std::pair<std::pair<int, int>, int>> v(freq.begin(), freq.end());
  std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::pair<Color, Shape>> out;
  for (const auto& [k, f] : v) out.emplace_back(static_cast<Color>(k.first), static_cast<Shape>(k.second));
  return out;
}

void balance_existence_probes(std::vector<Question>& qs, Rng& rng) {
  std::vector<size_t> absent;
  size_t present = 0;
  for (size_t i = 0; i < qs.size(); ++i) {
    if (qs[i].pope.empty()) continue;
    if (qs[i].answer == "yes") ++present;
    else absent.push_back(i);
  }
  rng.shuffle(absent);
  std::vector<uint8_t> drop(qs.size(), 0);
  for (size_t k = present; k < absent.size(); ++k) drop[absent[k]] = 1;
  std::vector<Question> kept;
  for (size_t i = 0; i < qs.size(); ++i)
    if (!drop[i]) kept.push_back(std::move(qs[i]));
  qs = std::move(kept);
}

std::vector<Question> make_questions(const Scene& s, Rng& rng, const QuestionOptions& opt) {
  std::vector<Question> qs;
  auto add = [&](const std::string& kind, std::vector<std::string> allowed,
                 const std::function<std::string(const std::string&)>& fill, const std::string& answer,
                 std::vector<int> items = {}) {
    const TemplateInfo& t = pick_template(kind, rng, opt.split, opt.held_out_template_probability, allowed);
    Question q;
    q.kind = kind;
    q.template_id = t.id;
    q.held_out_template = t.held_out;
    q.question = fill(t.text);
    q.answer = answer;
    q.items = std::move(items);
    if (!q.question.empty()) qs.push_back(std::move(q));
  };
  const size_t n = s.objects.size();
  const int figure_item = static_cast<int>(n);
  // The objects matching a predicate.
  auto objects_where = [&](const std::function<bool(const Object&)>& match) {
    std::vector<int> v;
    for (size_t j = 0; j < n; ++j)
      if (match(s.objects[j])) v.push_back(static_cast<int>(j));
    return v;
  };

  // Attribute questions about each object.
  for (size_t i = 0; i < n; ++i) {
    const Object& o = s.objects[i];
    const std::string rc = reference(s, i, kColor), rs = reference(s, i, kShape), rz = reference(s, i, kSize),
                      rp = reference(s, i, kPos);
    if (!rc.empty())
      add(
          "color", {}, [&](std::string t) { return replace_all(t, "{ref}", rc); }, name(o.color), {static_cast<int>(i)});
    if (!rs.empty())
      add(
          "shape", {}, [&](std::string t) { return replace_all(t, "{ref}", rs); }, name(o.shape), {static_cast<int>(i)});
    if (!rz.empty())
      add(
          "size", {}, [&](std::string t) { return replace_all(t, "{ref}", rz); }, name(o.size), {static_cast<int>(i)});
    if (!rp.empty())
      add(
          "position", {}, [&](std::string t) { return replace_all(t, "{ref}", rp); }, cell_name(o.cell), {static_cast<int>(i)});
  }

  // Counts.
  add(
      "count", {"q.count.objects"}, [](std::string t) { return t; }, count_word(static_cast<int>(n)),
      objects_where([](const Object&) { return true; }));
  {
    const Shape sh = rng.pick(all_shapes());
    int k = 0;
    for (const auto& o : s.objects) k += o.shape == sh;
    add(
        "count", {"q.count.shapes", "q.count.ho"},
        [&](std::string t) { return replace_all(t, "{shapes}", plural(sh)); }, count_word(k),
        objects_where([&](const Object& o) { return o.shape == sh; }));
    const Color c = rng.pick(all_colors());
    k = 0;
    for (const auto& o : s.objects) k += o.color == c;
    add(
        "count", {"q.count.colors"}, [&](std::string t) { return replace_all(t, "{color}", name(c)); }, count_word(k),
        objects_where([&](const Object& o) { return o.color == c; }));
  }

  // Relations: "What is left of the X?" and "Is the A above the B?".
  for (int round = 0; n >= 2 && round < std::max(1, opt.relations.rounds); ++round) {
    const size_t i = static_cast<size_t>(rng.below(n));
    const int rel = static_cast<int>(rng.below(4));
    const std::string ref = reference(s, i, 0);
    std::vector<size_t> hits;
    for (size_t j = 0; j < n; ++j)
      if (j != i && related(s.objects[j], s.objects[i], rel)) hits.push_back(j);
    std::vector<int> what_items;
    if (opt.relations.items) {
      what_items.push_back(static_cast<int>(i));
      for (size_t h : hits) what_items.push_back(static_cast<int>(h));
    }
    if (!ref.empty())
      add(
          "relation", {"q.relation.what", "q.relation.which"},
          [&](std::string t) { return replace_all(replace_all(t, "{rel}", rel_words(rel)), "{ref}", ref); },
          name_objects(s, hits), what_items);
    size_t j = static_cast<size_t>(rng.below(n - 1));
    if (j >= i) ++j;
    const std::string ra = reference(s, j, 0), rb = ref;
    int rel2 = static_cast<int>(rng.below(4));
    if (opt.relations.yes_share >= 0) {
      // Some relation holds for two objects in different cells, and some does not (left and
      // right exclude each other): draw the answer first, then a relation that gives it.
      std::vector<int> holds, fails;
      for (int r = 0; r < 4; ++r) (related(s.objects[j], s.objects[i], r) ? holds : fails).push_back(r);
      const bool yes = rng.chance(opt.relations.yes_share);
      const std::vector<int>& from = (yes && !holds.empty()) || fails.empty() ? holds : fails;
      rel2 = from[rng.below(from.size())];
    }
    std::vector<int> yesno_items;
    if (opt.relations.items) yesno_items = {static_cast<int>(j), static_cast<int>(i)};
    if (!ra.empty() && !rb.empty())
      add(
          "relation", {"q.relation.yesno"},
          [&](std::string t) {
            return replace_all(replace_all(replace_all(t, "{a}", ra), "{b}", rb), "{rel}", rel_words(rel2));
          },
          related(s.objects[j], s.objects[i], rel2) ? "yes" : "no", yesno_items);
  }

  add(
      "style", {}, [](std::string t) { return t; }, name(s.style));
  add(
      "background", {}, [](std::string t) { return t; }, name(s.background));

  // Stick figure.
  add(
      "figure", {"q.figure.present"}, [](std::string t) { return t; }, s.figure ? "yes" : "no",
      s.figure ? std::vector<int>{figure_item} : std::vector<int>{});
  if (s.figure) {
    const Figure& f = *s.figure;
    add(
        "figure", {"q.figure.arm", "q.figure.arm_ho"}, [](std::string t) { return t; }, arm_answer(f.arms), {figure_item});
    add(
        "figure", {"q.figure.color"}, [](std::string t) { return t; }, name(f.color), {figure_item});
    add(
        "figure", {"q.figure.legs"}, [](std::string t) { return t; }, f.legs == LegPose::Apart ? "yes" : "no", {figure_item});
    add(
        "figure", {"q.figure.side"}, [](std::string t) { return t; }, name(f.side), {figure_item});
  }

  // Keep a random subset of the questions above.
  rng.shuffle(qs);
  if (static_cast<int>(qs.size()) > opt.max_questions) qs.resize(static_cast<size_t>(std::max(0, opt.max_questions)));

  // POPE-style existence probes.
  if (opt.existence && n > 0) {
    auto present = [&](Color c, Shape sh) {
      for (const auto& o : s.objects)
        if (o.color == c && o.shape == sh) return true;
      return false;
    };
    // Absent pairs a training scene may be asked about (see never_probed_in_training).
    auto may_probe_absent = [&](Color c, Shape sh) {
      if (present(c, sh)) return false;
      if (opt.split != Split::Train) return true;
      for (const auto& h : opt.never_probed_in_training)
        if (h.first == c && h.second == sh) return false;
      return true;
    };
    auto probe = [&](Color c, Shape sh, const char* kind) {
      add(
          "exists", {},
          [&](std::string t) { return replace_all(replace_all(t, "{color}", name(c)), "{shape}", name(sh)); },
          present(c, sh) ? "yes" : "no", objects_where([&](const Object& o) { return o.color == c && o.shape == sh; }));
      qs.back().pope = kind;
    };
    const Object& pos = s.objects[static_cast<size_t>(rng.below(n))];
    probe(pos.color, pos.shape, "positive");
    // random: any absent pair.
    std::vector<std::pair<Color, Shape>> absent;
    for (Color c : all_colors())
      for (Shape sh : all_shapes())
        if (may_probe_absent(c, sh)) absent.emplace_back(c, sh);
    if (!absent.empty()) {
      const auto r = rng.pick(absent);
      probe(r.first, r.second, "random");
    }
    // popular: the most frequent absent pair.
    static std::once_flag once;
    static std::vector<std::pair<Color, Shape>> default_rank;
    const std::vector<std::pair<Color, Shape>>* rank = &opt.popularity;
    if (rank->empty()) {
      std::call_once(once, [] { default_rank = object_popularity(); });
      rank = &default_rank;
    }
    for (const auto& p : *rank)
      if (may_probe_absent(p.first, p.second)) {
        probe(p.first, p.second, "popular");
        break;
      }
    // adversarial: one attribute away from a present object.
    const Object& base = s.objects[static_cast<size_t>(rng.below(n))];
    std::vector<std::pair<Color, Shape>> near;
    for (Color c : all_colors())
      if (may_probe_absent(c, base.shape)) near.emplace_back(c, base.shape);
    for (Shape sh : all_shapes())
      if (may_probe_absent(base.color, sh)) near.emplace_back(base.color, sh);
    if (!near.empty()) {
      const auto a = rng.pick(near);
      probe(a.first, a.second, "adversarial");
    }
  }

  if (opt.describe) {
    const TemplateInfo& t = pick_template("describe", rng, opt.split, opt.held_out_template_probability);
    Question q;
    q.kind = "describe";
    q.template_id = t.id;
    q.held_out_template = t.held_out;
    q.question = t.text;
    q.answer = describe_scene(s, rng, opt.split == Split::HeldOut);
    qs.push_back(std::move(q));
  }
  return qs;
}

}  // namespace iris::world
