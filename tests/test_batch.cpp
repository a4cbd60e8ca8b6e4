// Batch rendering: job file validation (each bad line reported with its number, the good ones
// kept), sharding, resume, and a kill -9 in the middle of a run.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/image.h"
#include "core/png_text.h"
#include "pipelines/batch_render.h"
#include "pipelines/random_model.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace iris;

namespace {

const std::string kFixtures = IRIS_FIXTURES_DIR;

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string write_text(const std::string& name, const std::string& text) {
  const std::string p = (testing_util::scratch_dir() / name).string();
  std::ofstream(p) << text;
  return p;
}

// A tiny random SD pipeline, shared by the tests of this file (built once per process).
const std::string& tiny_model_dir() {
  static const std::string dir = [] {
    const std::string d = (fs::temp_directory_path() / ("iris_batch_model_" + std::to_string(::getpid()))).string();
    write_random_sd_pipeline(d, tiny_sd_spec(kFixtures + "/data/clip_tokenizer"));
    return d;
  }();
  return dir;
}

std::string jobs_text(int n) {
  std::string t = "# a comment, then jobs\n";
  for (int i = 0; i < n; ++i)
    t += "{\"id\": \"j" + std::to_string(i) + "\", \"prompt\": \"a red circle " + std::to_string(i) +
         "\", \"steps\": 1, \"size\": \"16x16\", \"seed\": " + std::to_string(100 + i) +
         (i % 3 == 0 ? ", \"count\": 2" : "") + "}\n";
  return t;
}

std::set<std::string> lines_of(const std::string& text) {
  std::set<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.insert(l);
  return out;
}

}  // namespace

TEST(BatchFile, BadLinesAreReportedByNumberAndGoodLinesKept) {
  const std::string init = (testing_util::scratch_dir() / "init.png").string();
  save_png(init, Image(16, 16, 3));
  const std::string path = write_text("jobs.jsonl",
                                      "{\"prompt\": \"ok one\"}\n"                                  // 1 good
                                      "{\"prompt\": \"broken\"\n"                                   // 2 malformed JSON
                                      "{\"prompt\": \"x\", \"stesp\": 3}\n"                         // 3 unknown key
                                      "\n"                                                          // 4 blank
                                      "{\"negative\": \"no prompt\"}\n"                             // 5 missing prompt
                                      "{\"prompt\": \"x\", \"size\": \"100000x64\"}\n"              // 6 absurd size
                                      "{\"prompt\": \"x\", \"init\": \"missing.png\"}\n"            // 7 missing file
                                      "{\"prompt\": \"x\", \"count\": 0}\n"                         // 8 count 0
                                      "{\"id\": \"a/b\", \"prompt\": \"x\"}\n"                      // 9 bad id
                                      "{\"id\": \"line1\", \"prompt\": \"dup of line 1's id\"}\n"   // 10 duplicate
                                      "{\"prompt\": \"img2img\", \"init\": \"init.png\", \"strength\": 0.5}\n"  // 11 good
                                      "[1, 2]\n"                                                    // 12 not an object
                                      "{\"prompt\": \"x\", \"steps\": 0}\n");                       // 13 steps 0
  BatchFile f = read_batch_file(path);
  ASSERT_EQ(f.jobs.size(), 2u);
  EXPECT_EQ(f.jobs[0].line, 1);
  EXPECT_EQ(f.jobs[0].id, "line1");
  EXPECT_EQ(f.jobs[1].line, 11);
  EXPECT_EQ(f.jobs[1].init_path, init);  // relative to the jobs file
  std::map<int, std::string> errors;
  for (const auto& e : f.errors) errors[e.line] = e.message;
  ASSERT_EQ(errors.size(), 10u);
  for (int line : {2, 3, 5, 6, 7, 8, 9, 10, 12, 13}) {
    ASSERT_TRUE(errors.count(line)) << "line " << line;
    EXPECT_NE(errors[line].find("jobs.jsonl:" + std::to_string(line)), std::string::npos) << errors[line];
  }
  EXPECT_NE(errors[3].find("stesp"), std::string::npos);
  EXPECT_NE(errors[5].find("prompt"), std::string::npos);
  EXPECT_NE(errors[6].find("100000"), std::string::npos);
  EXPECT_NE(errors[7].find("missing.png"), std::string::npos);
  EXPECT_NE(errors[10].find("line1"), std::string::npos);
  EXPECT_THROW(read_batch_file((testing_util::scratch_dir() / "nope.jsonl").string()), IoError);
}

TEST(BatchFile, NoSizeOrAutoIsTheModelsNativeSize) {
  // 0x0 is resolved when the job renders (with_native_size); a bad size is refused on its line.
  const std::string path = write_text("sizes.jsonl",
                                      "{\"prompt\": \"a\"}\n"
                                      "{\"prompt\": \"b\", \"size\": \"auto\"}\n"
                                      "{\"prompt\": \"c\", \"size\": \"96x64\"}\n"
                                      "{\"prompt\": \"d\", \"size\": \"0x64\"}\n"
                                      "{\"prompt\": \"e\", \"size\": \"wide\"}\n");
  const BatchFile f = read_batch_file(path);
  ASSERT_EQ(f.jobs.size(), 3u);
  for (size_t i : {0, 1}) {
    EXPECT_EQ(f.jobs[i].params.width, 0);
    EXPECT_EQ(f.jobs[i].params.height, 0);
  }
  EXPECT_EQ(f.jobs[2].params.width, 96);
  EXPECT_EQ(f.jobs[2].params.height, 64);
  ASSERT_EQ(f.errors.size(), 2u);
  EXPECT_NE(f.errors[0].message.find("0x64"), std::string::npos) << f.errors[0].message;
  EXPECT_NE(f.errors[1].message.find("wide"), std::string::npos) << f.errors[1].message;
}

TEST(BatchFile, SeedWithoutSeedKeyIsStableAndPerId) {
  const std::string a = write_text("a.jsonl", "{\"id\": \"x\", \"prompt\": \"p\"}\n{\"id\": \"y\", \"prompt\": \"p\"}\n");
  BatchFile f1 = read_batch_file(a), f2 = read_batch_file(a);
  ASSERT_EQ(f1.jobs.size(), 2u);
  EXPECT_EQ(f1.jobs[0].params.seed, f2.jobs[0].params.seed);
  EXPECT_NE(f1.jobs[0].params.seed, f1.jobs[1].params.seed);
}

TEST(BatchShards, DisjointAndCoverEverything) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    const std::string id = "job" + std::to_string(i);
    int hits = 0;
    for (int k = 0; k < 4; ++k) hits += in_shard(id, k, 4);
    EXPECT_EQ(hits, 1) << id;
  }
  EXPECT_THROW(in_shard("x", 4, 4), ConfigError);
  EXPECT_THROW(in_shard("x", 0, 0), ConfigError);
}

TEST(BatchRun, ResumeAndShardsGiveTheSameFilesAndManifest) {
  SdModel model = SdModel::load(tiny_model_dir());
  BatchFile f = read_batch_file(write_text("jobs.jsonl", jobs_text(4)));
  ASSERT_TRUE(f.errors.empty());
  // One whole run.
  BatchOptions whole;
  whole.out_dir = (testing_util::scratch_dir() / "whole").string();
  BatchSummary s = run_batch(model, f.jobs, whole);
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.images_total, 6);  // jobs 0 and 3 make two images
  EXPECT_EQ(s.images_rendered, 6);
  const std::string manifest = slurp(s.manifest);
  EXPECT_EQ(lines_of(manifest).size(), 6u);
  const PngText meta = read_png_text(whole.out_dir + "/j1.png");
  EXPECT_EQ(params_from_metadata(meta, "j1.png").seed, 101u);
  EXPECT_EQ(params_from_metadata(read_png_text(whole.out_dir + "/j0-1.png"), "j0-1").seed, 101u);  // seed + k

  // Again into the same folder without --resume: refused, nothing overwritten.
  EXPECT_THROW(run_batch(model, f.jobs, whole), ConfigError);

  // Resume after losing two images (and a stale temp file from a killed write).
  fs::remove(whole.out_dir + "/j2.png");
  fs::remove(whole.out_dir + "/j3-0.png");
  std::ofstream(whole.out_dir + "/j2.png.tmp") << "half a png";
  BatchOptions resume = whole;
  resume.resume = true;
  BatchSummary r = run_batch(model, f.jobs, resume);
  EXPECT_EQ(r.images_rendered, 2);
  EXPECT_EQ(r.images_skipped, 4);
  EXPECT_FALSE(fs::exists(whole.out_dir + "/j2.png.tmp"));
  EXPECT_EQ(slurp(r.manifest), manifest);  // rebuilt in job order

  // Two shards into one folder: the same files, and their manifests join into the whole one.
  const std::string sharded = (testing_util::scratch_dir() / "sharded").string();
  std::set<std::string> joined;
  for (int k = 0; k < 2; ++k) {
    BatchOptions o;
    o.out_dir = sharded;
    o.shard_index = k;
    o.shard_count = 2;
    BatchSummary ss = run_batch(model, f.jobs, o);
    for (const auto& l : lines_of(slurp(ss.manifest))) EXPECT_TRUE(joined.insert(l).second) << l;
  }
  EXPECT_EQ(joined, lines_of(manifest));
  for (const auto& e : fs::directory_iterator(whole.out_dir))
    if (e.path().extension() == ".png")
      EXPECT_EQ(slurp(e.path().string()), slurp(sharded + "/" + e.path().filename().string())) << e.path();
}

TEST(BatchRun, FailingJobIsReportedAndTheRestRender) {
  SdModel model = SdModel::load(tiny_model_dir());
  // Line 2 parses (sampler names are the scheduler factory's to judge) but fails when it runs.
  BatchFile f = read_batch_file(write_text("jobs.jsonl",
                                           "{\"id\": \"a\", \"prompt\": \"p\", \"steps\": 1, \"size\": \"16x16\"}\n"
                                           "{\"id\": \"b\", \"prompt\": \"p\", \"steps\": 1, \"size\": \"16x16\", "
                                           "\"sampler\": \"no_such_sampler\"}\n"
                                           "{\"id\": \"c\", \"prompt\": \"p\", \"steps\": 1, \"size\": \"16x16\"}\n"));
  ASSERT_EQ(f.jobs.size(), 3u);
  BatchOptions o;
  o.out_dir = (testing_util::scratch_dir() / "out").string();
  std::vector<int> failed_lines;
  BatchCallbacks cb;
  cb.on_job_error = [&](int line, const std::string&, const std::string&) { failed_lines.push_back(line); };
  BatchSummary s = run_batch(model, f.jobs, o, cb);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(failed_lines, std::vector<int>{2});
  EXPECT_TRUE(fs::exists(o.out_dir + "/a.png"));
  EXPECT_FALSE(fs::exists(o.out_dir + "/b.png"));
  EXPECT_TRUE(fs::exists(o.out_dir + "/c.png"));
  EXPECT_NE(s.failures.at(0).message.find("no_such_sampler"), std::string::npos) << s.failures.at(0).message;
}

#ifdef IRIS_CLI
// kill -9 in the middle of a 20-job run, then --resume: every image present once, none
// truncated, each identical to an uninterrupted run's.
TEST(BatchCli, KillNineThenResumeEqualsUninterrupted) {
  const std::string jobs = write_text("jobs.jsonl", jobs_text(20));
  const std::string model = tiny_model_dir();
  const std::string clean = (testing_util::scratch_dir() / "clean").string();
  const std::string killed = (testing_util::scratch_dir() / "killed").string();
  const std::string base = std::string(IRIS_CLI) + " batch " + jobs + " --model " + model + " --out ";
  ASSERT_EQ(std::system((base + clean + " >/dev/null 2>&1").c_str()), 0);

  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + base + killed + " >/dev/null 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  // Wait until a few images exist, then kill without warning.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  auto pngs = [&](const std::string& d) {
    int n = 0;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (e.path().extension() == ".png") ++n;
    return n;
  };
  while (pngs(killed) < 5 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed";
  const int before = pngs(killed);
  EXPECT_LT(before, 27);

  ASSERT_EQ(std::system((base + killed + " --resume >/dev/null 2>&1").c_str()), 0);
  int compared = 0;
  for (const auto& e : fs::directory_iterator(clean)) {
    const std::string name = e.path().filename().string();
    EXPECT_EQ(slurp(e.path().string()), slurp(killed + "/" + name)) << name;
    ++compared;
  }
  EXPECT_EQ(compared, 27 + 1);  // 20 jobs, 7 of them with two images, and the manifest
  for (const auto& e : fs::directory_iterator(killed)) EXPECT_TRUE(fs::exists(clean + "/" + e.path().filename().string())) << e.path();
}
#endif
